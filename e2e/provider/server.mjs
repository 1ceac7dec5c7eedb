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
//
// Its built-in development interactions ask for a login and a password, then consent; only the
// accounts below exist. Prints "ready <issuer>" once listening.
import Provider from 'oidc-provider';

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
};
if (BACKCHANNEL_URI) {
  client.backchannel_logout_uri = BACKCHANNEL_URI;
  client.backchannel_logout_session_required = true;
}

const provider = new Provider(ISSUER, {
  clients: [client],
  async findAccount(ctx, id) {
    const profile = ACCOUNTS[id];
    if (!profile) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...profile }) };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'groups'],
  },
  scopes: ['openid', 'email', 'profile', 'offline_access'],
  // PKCE for every client, and S256 is the only method oidc-provider accepts.
  pkce: { required: () => true },
  // The relay's client may always refresh: issue a refresh token with every code.
  issueRefreshToken: async (ctx, c) => c.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
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
