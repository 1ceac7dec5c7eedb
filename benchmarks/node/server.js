// The Node stack oidc-relay replaces, as a benchmark peer: Express 5, express-session and
// connect-pg-simple on a pg.Pool of 10, one process. GET /auth answers 200 with the same four
// identity headers as the relay and the bare endpoint when the session holds a user, else 401.
// express-session with rolling: true writes the session row on every check (touch).
//
// Usage: PORT=... DATABASE_URL=postgresql://... SESSION_SECRET=... node server.js
"use strict";

const express = require("express");
const session = require("express-session");
const PgStore = require("connect-pg-simple")(session);
const { Pool } = require("pg");

const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
const app = express();
app.use(
  session({
    store: new PgStore({ pool, tableName: "session", pruneSessionInterval: false }),
    secret: process.env.SESSION_SECRET,
    resave: false,
    saveUninitialized: false,
    rolling: true,
    cookie: { maxAge: 8 * 3600 * 1000 },
  }),
);
app.get("/auth", (req, res) => {
  const user = req.session.user;
  if (!user) {
    res.status(401).end();
    return;
  }
  res.set({
    "x-auth-request-subject": user.sub,
    "x-auth-request-user": user.preferred_username,
    "x-auth-request-email": user.email,
    "x-auth-request-groups": user.groups.join(","),
  });
  res.status(200).end();
});
app.listen(Number(process.env.PORT), "127.0.0.1");
