-- The forward-auth check for deploy/haproxy.cfg: HAProxy 2.6 has no auth subrequest (nginx's
-- auth_request, Caddy's forward_auth), so this action makes one with HAProxy's own HTTP client.
-- Save it as /etc/haproxy/haproxy-auth.lua (haproxy.cfg loads it from there).
--
--   http-request lua.relay-auth <the relay's /auth/redirect URL, with the narrower rules>
--
-- It asks the relay about the request with the browser's headers and the original URL in
-- X-Forwarded-*, then leaves the decision to haproxy.cfg: the relay's status in
-- txn.relay_status (0 when the relay could not be reached), its Location in
-- txn.relay_location, and on 200 the relay's X-Auth-Request-* headers set on the request.
-- haproxy.cfg has already deleted any the client sent under those names.

-- Not copied from the browser's request: framing and hop-by-hop headers (the check is a GET
-- without a body, on a connection of its own), and the forwarding headers, which are set
-- below from what HAProxy itself saw: a client's own must not steer the check.
local NOT_COPIED = {
  ["host"] = true, ["content-length"] = true, ["transfer-encoding"] = true,
  ["connection"] = true, ["keep-alive"] = true, ["upgrade"] = true, ["te"] = true,
  ["trailer"] = true, ["expect"] = true, ["proxy-authorization"] = true,
  ["x-forwarded-for"] = true, ["x-forwarded-proto"] = true, ["x-forwarded-host"] = true,
  ["x-forwarded-uri"] = true, ["x-forwarded-method"] = true, ["x-real-ip"] = true,
  ["forwarded"] = true,
}

local function check(txn, url)
  local headers = {}
  for name, values in pairs(txn.http:req_get_headers()) do
    if not NOT_COPIED[name] then
      -- HAProxy numbers a header's lines from 0; its client wants a list from 1.
      local list = {}
      for i = 0, #values do list[#list + 1] = values[i] end
      headers[name] = list
    end
  end
  headers["x-forwarded-for"] = { txn.f:src() }
  headers["x-forwarded-proto"] = { txn.f:ssl_fc() and "https" or "http" }
  headers["x-forwarded-host"] = { txn.f:req_hdr("host") }
  -- The path and query as the client spelled them (url would be absolute over HTTP/2).
  headers["x-forwarded-uri"] = { txn.f:pathq() }
  headers["x-forwarded-method"] = { txn.f:method() }

  -- timeout is in ms, and HAProxy 2.6 applies it to each step of the exchange: a relay that
  -- accepts and never answers gets a 504 of HAProxy's own after about four times this.
  -- Anything but 200, 302, 401 and 403 is a relay unavailable to haproxy.cfg.
  local response = core.httpclient():get{ url = url, headers = headers, timeout = 3000 }
  local status = response and tonumber(response.status) or 0
  txn:set_var("txn.relay_status", status)
  local answered = (response and response.headers) or {}
  if status == 302 and answered["location"] then
    txn:set_var("txn.relay_location", answered["location"][0])
  elseif status == 200 then
    for name, values in pairs(answered) do
      if name:sub(1, 15) == "x-auth-request-" then
        txn.http:req_set_header(name, values[0])
      end
    end
  end
end

core.register_action("relay-auth", { "http-req" }, check, 1)
