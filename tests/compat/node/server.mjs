// A better-auth server as an app beside our services would run it: the Drizzle adapter on
// the same Postgres, the same secret, email and password sign-in, the bearer plugin.
// Env: DATABASE_URL, BETTER_AUTH_SECRET, PORT, TRUSTED_ORIGINS (comma-separated),
// SECURE_COOKIES ("1" for __Secure- cookies), RATE_LIMITS ("database": better-auth's default
// rules, counted in the rate_limit table), POOL_SIZE (database connections, default 5; the
// benchmark gives it as many as our service). Prints one JSON line when it listens.
import { createServer } from "node:http";

import { betterAuth } from "better-auth";
import { drizzleAdapter } from "better-auth/adapters/drizzle";
import { toNodeHandler } from "better-auth/node";
import { bearer } from "better-auth/plugins";
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";

import * as schema from "./schema.mjs";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};

const port = Number(env("PORT"));
const baseURL = `http://127.0.0.1:${port}`;
const pool = new pg.Pool({
  connectionString: env("DATABASE_URL"),
  max: Number(process.env.POOL_SIZE ?? "5"),
});
const db = drizzle(pool, { schema });

export const auth = betterAuth({
  baseURL,
  secret: env("BETTER_AUTH_SECRET"),
  database: drizzleAdapter(db, { provider: "pg", schema }),
  emailAndPassword: { enabled: true },
  trustedOrigins: (process.env.TRUSTED_ORIGINS ?? "").split(",").filter(Boolean),
  plugins: [bearer()],
  rateLimit:
    process.env.RATE_LIMITS === "database"
      ? { enabled: true, storage: "database" }
      : { enabled: false },
  telemetry: { enabled: false },
  advanced: { useSecureCookies: process.env.SECURE_COOKIES === "1" },
});

const server = createServer(toNodeHandler(auth));
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ listening: baseURL })}\n`);
});

const stop = () => {
  server.close();
  pool.end().finally(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
