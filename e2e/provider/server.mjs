// A real OpenID Provider for oidc-relay's end-to-end tests: the certified npm package
// `oidc-provider`, configured here (no code from its examples), on 127.0.0.1 only.
//
// Environment:
//   PORT                 where to listen (127.0.0.1 only)
//   ISSUER               e.g. http://localhost:PORT
//   CLIENT_SECRET        the relay's client secret
//   REDIRECT_URIS        comma-separated: the relay's <public_url>/callback
//   POST_LOGOUT_URIS     comma-separated post-logout redirect URIs
//   BACKCHANNEL_URI      the relay's back-channel logout endpoint (optional)
//   ACCESS_TOKEN_TTL     seconds an access token lives (optional; oidc-provider's default
//                        is an hour): short, to see the relay refresh within a test
//   ROTATE_REFRESH_TOKENS  "1": a new refresh token with every refresh (optional; by default
//                        oidc-provider rotates only public clients' tokens, or old ones).
//                        Strictly: the old one is consumed, and sending it again revokes
//                        the grant (invalid_grant)
//   REFRESH_ANSWER_DELAY_MS  hold the answer to a refresh that succeeded this long after it
//                        is done (the token rotated): a slow provider (optional; a refused
//                        refresh is answered at once)
//   CI_BOT_SECRET        the client secret of `ci-bot` (optional; default 'ci-bot-secret')
//   PKJ_JWKS_URI         where the relay publishes its public keys (optional): adds a third
//                        client `oidc-relay-pkj` that authenticates with private_key_jwt
//
// Its built-in development interactions ask for a login and a password, then consent; only the
// accounts below exist. Prints "ready <issuer>" once listening.
//
// Step-up (acr): discovery advertises acr_values_supported ["urn:pwd", "urn:mfa"]. A login
// records acr urn:pwd, or urn:mfa when the authorization request's acr_values include urn:mfa
// (the dev form's password stands in for both factors: a wrapper around interactionFinished
// sets `login.acr` from the interaction's params). A check added to the login prompt asks for
// a new login (new auth_time) when urn:mfa is requested and the provider session's acr is not
// urn:mfa (with prompt=none: login_required), so an old password-only session never satisfies
// a step-up silently. A session that has urn:mfa keeps it for later requests without
// acr_values. max_age=N re-authenticates natively (oidc-provider's own login check). The ID
// token carries acr and auth_time: the relay's clients have require_auth_time, and `acr`
// belongs to the openid scope's claims here (oidc-provider otherwise puts acr in the ID token
// only when acr_values or the claims parameter ask for it).
//
// `oidc-relay-pkj` (with PKJ_JWKS_URI): token_endpoint_auth_method private_key_jwt, keys from
// jwks_uri PKJ_JWKS_URI (fetched on first use, loopback allowed, see `fetch` below), the same
// redirect, post-logout and back-channel URIs as `oidc-relay`, authorization_code +
// refresh_token. The assertion may be RS256 or ES256 (no token_endpoint_auth_signing_alg is
// pinned, so oidc-provider's asymmetric defaults apply: also PS256, Ed25519/EdDSA). Its `aud`
// may be the issuer, the token endpoint URL, or the URL of the endpoint it is sent to
// (/token, /token/introspection, /token/revocation, /request); an array needs one of them.
// The key set is cached: oidc-provider refetches jwks_uri only when it is stale, i.e. 60 s
// after the last fetch (longer if the response's Cache-Control max-age / Expires says so; never
// shorter). An assertion signed with a new kid is refused (invalid_client) until then, and
// passes on the first request after that, without a restart.
//
// PAR (RFC 9126) is on by default in oidc-provider 9 (pushed_authorization_request_endpoint
// <issuer>/request, not required: require_pushed_authorization_requests false).
//
// For the relay's bearer-token tests, a second client `ci-bot` (client_secret_basic) may only
// use the client-credentials grant. With `resource=<indicator>` (RFC 8707) it gets an access
// token for one of the resource servers in RESOURCE_SERVERS below:
//   https://api.example.test             a JWT (RFC 9068: typ at+jwt, RS256), aud
//                                        https://api.example.test, an hour, scope api:read
//   https://api.example.test/short-lived a JWT with the same aud, living 2 seconds
//   https://api.example.test/opaque      an opaque token with that aud: for introspection
//   https://other-api.example.test       a JWT for a foreign audience
//                                        (aud https://other-api.example.test)
// Any other indicator is refused (invalid_target). The token's scope is the resource server's
// (api:read) whether or not the request asks for it (a scope the resource server does not
// know is dropped). Every client-credentials token carries sub = the client's id (in a JWT
// and in introspection), and ci-bot's also `groups: ["ci"]`. Without `resource` (the relay's
// own login) access tokens are opaque, for userinfo, as before.
// Introspection (/token/introspection) answers any confidential client about any token (so
// oidc-relay may introspect ci-bot's opaque token; JWT access tokens are refused there:
// unsupported_token_type). Revocation (/token/revocation, RFC 7009) takes a client's own tokens
// only (another client's: invalid_request), and revoking a refresh token revokes its grant.
import Provider, { errors, interactionPolicy } from 'oidc-provider';

const {
  PORT,
  ISSUER,
  CLIENT_SECRET,
  REDIRECT_URIS,
  POST_LOGOUT_URIS,
  BACKCHANNEL_URI,
  ACCESS_TOKEN_TTL,
  ROTATE_REFRESH_TOKENS,
  REFRESH_ANSWER_DELAY_MS,
  CI_BOT_SECRET = 'ci-bot-secret',
  PKJ_JWKS_URI,
} = process.env;

const ACCOUNTS = {
  alice: {
    email: 'alice@example.com',
    email_verified: true,
    name: 'Alice Example',
    preferred_username: 'alice',
    groups: ['admins', 'staff'],
  },
  bob: {
    email: 'bob@example.com',
    email_verified: true,
    name: 'Bob Example',
    preferred_username: 'bob',
    groups: ['staff'],
  },
};

const client = {
  client_id: 'oidc-relay',
  client_secret: CLIENT_SECRET,
  redirect_uris: REDIRECT_URIS.split(','),
  post_logout_redirect_uris: POST_LOGOUT_URIS.split(','),
  response_types: ['code'],
  grant_types: ['authorization_code', 'refresh_token'],
  token_endpoint_auth_method: 'client_secret_basic',
  id_token_signed_response_alg: 'RS256',
  require_auth_time: true,
};
if (BACKCHANNEL_URI) {
  client.backchannel_logout_uri = BACKCHANNEL_URI;
  client.backchannel_logout_session_required = true;
}
// The same relay, authenticating with a signed JWT (private_key_jwt) instead of a secret.
const { client_secret: _, ...relayWithoutSecret } = client;
const pkjClient = PKJ_JWKS_URI && {
  ...relayWithoutSecret,
  client_id: 'oidc-relay-pkj',
  token_endpoint_auth_method: 'private_key_jwt',
  jwks_uri: PKJ_JWKS_URI,
};

// A machine client: client credentials only, no browser, no redirects.
const ciBot = {
  client_id: 'ci-bot',
  client_secret: CI_BOT_SECRET,
  redirect_uris: [],
  response_types: [],
  grant_types: ['client_credentials'],
  token_endpoint_auth_method: 'client_secret_basic',
};

// Resource indicators (RFC 8707) this provider issues access tokens for. accessTokenTTL is
// seconds; oidc-provider's default TTL for client-credentials tokens honours it.
const API = 'https://api.example.test';
const RESOURCE_SERVERS = {
  [API]: {
    audience: API, scope: 'api:read', accessTokenFormat: 'jwt', accessTokenTTL: 60 * 60,
  },
  [`${API}/short-lived`]: {
    audience: API, scope: 'api:read', accessTokenFormat: 'jwt', accessTokenTTL: 2,
  },
  [`${API}/opaque`]: {
    audience: API, scope: 'api:read', accessTokenFormat: 'opaque', accessTokenTTL: 60 * 60,
  },
  'https://other-api.example.test': {
    audience: 'https://other-api.example.test',
    scope: 'api:read',
    accessTokenFormat: 'jwt',
    accessTokenTTL: 60 * 60,
  },
};
const JWT_SIGNING = { sign: { alg: 'RS256' } };

// Step-up: a login recorded with acr urn:pwd does not satisfy a request for urn:mfa.
const PWD = 'urn:pwd';
const MFA = 'urn:mfa';
const asksForMfa = (params) => (params.acr_values || '').split(' ').includes(MFA);
const policy = interactionPolicy.base();
policy.get('login').checks.add(new interactionPolicy.Check(
  'acr_mfa',
  'a second factor is required',
  'login_required',
  (ctx) => asksForMfa(ctx.oidc.params) && ctx.oidc.session.acr !== MFA,
));

const provider = new Provider(ISSUER, {
  clients: [client, ciBot, ...(pkjClient ? [pkjClient] : [])],
  async findAccount(ctx, id) {
    const profile = ACCOUNTS[id];
    if (!profile) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...profile }) };
  },
  claims: {
    openid: ['sub', 'acr'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'groups'],
  },
  scopes: ['openid', 'email', 'profile', 'offline_access'],
  acrValues: [PWD, MFA],
  interactions: { policy },
  // PKCE for every client, and S256 is the only method oidc-provider accepts.
  pkce: { required: () => true },
  // The relay's client may always refresh: issue a refresh token with every code.
  issueRefreshToken: async (ctx, c) => c.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    clientCredentials: { enabled: true },
    // Any authenticated confidential client may ask about any token (a resource server's role).
    introspection: {
      enabled: true,
      allowedPolicy: async (ctx, caller) => caller.clientAuthMethod !== 'none',
    },
    // oidc-provider's default rule: a client may revoke its own tokens only (another's:
    // invalid_request).
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No resource asked: none (the relay's login keeps its opaque, userinfo-only token).
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
      async getResourceServerInfo(ctx, indicator) {
        const info = RESOURCE_SERVERS[indicator];
        if (!info) throw new errors.InvalidTarget();
        return info.accessTokenFormat === 'jwt' ? { ...info, jwt: JWT_SIGNING } : { ...info };
      },
    },
  },
  // Added to client-credentials tokens (stored, so in a JWT's payload and in introspection):
  // RFC 9068's sub (the client's id; oidc-provider puts it in JWTs, not in introspection), and
  // ci-bot's groups for the relay's access rules.
  async extraTokenClaims(ctx, token) {
    if (token.kind !== 'ClientCredentials') return undefined;
    return { sub: token.clientId, ...(token.clientId === 'ci-bot' ? { groups: ['ci'] } : {}) };
  },
  // oidc-provider refuses outgoing requests to special-use addresses (SSRF protection); in this
  // test stack the relay's back-channel logout endpoint is on 127.0.0.1 by design.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  // Fixed keys are fine for a provider that lives for one test run on loopback.
  cookies: { keys: ['e2e-only-cookie-key-not-secret'] },
  // Merged over oidc-provider's defaults: only the access token's lifetime changes.
  ...(ACCESS_TOKEN_TTL ? { ttl: { AccessToken: Number(ACCESS_TOKEN_TTL) } } : {}),
  ...(ROTATE_REFRESH_TOKENS === '1' ? { rotateRefreshToken: true } : {}),
});
provider.proxy = false;
// The dev login form checks a password only; record the login's acr as urn:mfa when the request
// asked for it (as if a second factor had been checked), urn:pwd otherwise.
{
  const finished = provider.interactionFinished.bind(provider);
  provider.interactionFinished = async (req, res, result, options) => {
    if (!result?.login) return finished(req, res, result, options);
    const { params } = await provider.interactionDetails(req, res);
    const acr = asksForMfa(params) ? MFA : PWD;
    return finished(req, res, { ...result, login: { ...result.login, acr } }, options);
  };
}
// A client-credentials token for a resource server gets that server's scope when the request
// asks for none (oidc-provider keeps only requested scopes; there is no setting for a default).
{
  const { save } = provider.ClientCredentials.prototype;
  provider.ClientCredentials.prototype.save = function saveWithDefaultScope(...args) {
    if (this.resourceServer && !this.scope) this.scope = this.resourceServer.scope || undefined;
    return save.apply(this, args);
  };
}
if (REFRESH_ANSWER_DELAY_MS) {
  // After the grant is done (and the refresh token rotated), before its answer leaves.
  provider.use(async (ctx, next) => {
    await next();
    const refreshed = ctx.oidc?.route === 'token' && ctx.status === 200
      && ctx.oidc.params?.grant_type === 'refresh_token';
    if (refreshed) {
      await new Promise((resolve) => { setTimeout(resolve, Number(REFRESH_ANSWER_DELAY_MS)); });
    }
  });
}
provider.on('backchannel.success', (ctx, c) => console.log(`backchannel.success ${c.clientId}`));
provider.on('backchannel.error', (ctx, err, c) =>
  console.log(`backchannel.error ${c.clientId} ${err.message}`));
provider.on('server_error', (ctx, err) => console.log(`server_error ${err.message}`));

provider.listen(Number(PORT), '127.0.0.1', () => {
  console.log(`ready ${ISSUER}`);
});
