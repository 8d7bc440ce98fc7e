// Drives better-auth's own client (`better-auth/client`) the way a browser app would, and
// prints what it got as JSON. Input on stdin:
//   {"origin": "<the app's origin>", "steps": [{"base": "<server URL>", "call": "signUp.email",
//     "args": {...}, "bearer": "<token>" (optional), "jar": true (default)}, ...]}
// Calls: signUp.email, signIn.email, getSession, signOut. One cookie jar is shared by every
// step, keyed by cookie name only, as a browser shares cookies of one host across its ports.
// Output: one JSON object {"steps": [...]}, each step {call, base, status, data, error,
// setCookie, setAuthToken, jar}; Date objects the client produced appear as {"$date": iso}.
import { createAuthClient } from "better-auth/client";

const input = JSON.parse(await new Promise((resolve, reject) => {
  let text = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => { text += chunk; });
  process.stdin.on("end", () => resolve(text));
  process.stdin.on("error", reject);
}));

const jar = new Map(); // cookie name -> value as the server sent it (URL-encoded)
let last = null; // what the last HTTP exchange looked like

function storeCookies(setCookies) {
  for (const line of setCookies) {
    const [pair, ...attrs] = line.split(";").map((s) => s.trim());
    const eq = pair.indexOf("=");
    const name = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    let expired = value === "";
    for (const attr of attrs) {
      const [key, v] = attr.split("=");
      if (key.toLowerCase() === "max-age" && Number(v) <= 0) expired = true;
      if (key.toLowerCase() === "expires" && Date.parse(v) <= Date.now()) expired = true;
    }
    if (expired) jar.delete(name);
    else jar.set(name, value);
  }
}

function makeFetch(useJar) {
  return async (input, init = {}) => {
    const request = new Request(input, init);
    const headers = new Headers(request.headers);
    headers.set("origin", globalThis.APP_ORIGIN); // a browser page on the app's origin
    if (useJar && jar.size) {
      headers.set("cookie", [...jar].map(([k, v]) => `${k}=${v}`).join("; "));
    }
    const response = await fetch(new Request(request, { headers }));
    const setCookie = response.headers.getSetCookie();
    if (useJar) storeCookies(setCookie);
    last = {
      status: response.status,
      setCookie,
      setAuthToken: response.headers.get("set-auth-token"),
    };
    return response;
  };
}

function tagDates(value) {
  if (value instanceof Date) return { $date: value.toISOString() };
  if (Array.isArray(value)) return value.map(tagDates);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, tagDates(v)]));
  }
  return value;
}

globalThis.APP_ORIGIN = input.origin;
const out = [];
for (const step of input.steps) {
  const useJar = step.jar !== false;
  const fetchOptions = { customFetchImpl: makeFetch(useJar) };
  if (step.bearer) fetchOptions.auth = { type: "Bearer", token: step.bearer };
  const client = createAuthClient({ baseURL: step.base, fetchOptions });
  const [group, method] = step.call.split(".");
  const fn = method ? client[group][method] : client[group];
  last = null;
  const result = step.args === undefined ? await fn() : await fn(step.args);
  out.push({
    call: step.call,
    base: step.base,
    status: last?.status ?? null,
    data: tagDates(result.data ?? null),
    error: result.error ? tagDates({ ...result.error }) : null,
    setCookie: last?.setCookie ?? [],
    setAuthToken: last?.setAuthToken ?? null,
    jar: Object.fromEntries(jar),
  });
}
process.stdout.write(`${JSON.stringify({ steps: out })}\n`);
process.exit(0);
