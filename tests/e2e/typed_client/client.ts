// A client of one service, typed by `api.d.ts`, which openapi-typescript generates from the
// service's own /openapi.json. tsc --strict must accept every call below and must refuse each
// line marked @ts-expect-error: the types are the document's, not `any`.
import createClient from "openapi-fetch";
import type { components, paths } from "./api.js";

type TodoRead = components["schemas"]["TodoRead"];
type ErrorBody = components["schemas"]["ErrorBody"];

declare const process: { env: Record<string, string | undefined> }; // Node's, all we use of it
const baseUrl = process.env.BASE_URL ?? "";
const client = createClient<paths>({ baseUrl });

function fail(step: string, error: ErrorBody | undefined, status: number): never {
  throw new Error(`${step}: ${status} ${error?.code ?? ""} ${error?.message ?? ""}`);
}

async function main(): Promise<void> {
  const email = `typed-${Date.now()}@example.com`;
  const up = await client.POST("/api/auth/sign-up/email", {
    body: { name: "Typed", email, password: "typed-client-password" },
  });
  if (up.data === undefined) fail("sign-up", up.error, up.response.status);
  const token: string | null | undefined = up.data.token;
  const userId: string = up.data.user.id;
  const headers = { Authorization: `Bearer ${token ?? ""}` };

  const created = await client.POST("/todos", { body: { title: "from a generated client" }, headers });
  if (created.data === undefined) fail("create", created.error, created.response.status);
  const todo: TodoRead = created.data;

  const read = await client.GET("/todos/{todo_id}", { params: { path: { todo_id: todo.id } }, headers });
  if (read.data === undefined) fail("read", read.error, read.response.status);

  const patched = await client.PATCH("/todos/{todo_id}", {
    params: { path: { todo_id: todo.id } },
    body: { completed: true },
    headers,
  });
  if (patched.data === undefined) fail("update", patched.error, patched.response.status);
  const completed: boolean = patched.data.completed;

  const page = await client.GET("/todos", { params: { query: { limit: 10 } }, headers });
  if (page.data === undefined) fail("list", page.error, page.response.status);
  const titles: string[] = page.data.items.map((t: TodoRead) => t.title);

  const removed = await client.DELETE("/todos/{todo_id}", { params: { path: { todo_id: todo.id } }, headers });
  const missing = await client.GET("/todos/{todo_id}", { params: { path: { todo_id: todo.id } }, headers });
  // Errors are typed too: the document's ErrorBody, with its stable code.
  const missingCode: string | undefined = missing.error?.code;

  const anonymous = await client.GET("/todos", {});
  const anonymousCode: string | undefined = anonymous.error?.code;

  console.log(
    JSON.stringify({
      userId,
      todoUserId: todo.userId,
      completed,
      titles,
      removed: removed.response.status,
      missing: [missing.response.status, missingCode],
      anonymous: [anonymous.response.status, anonymousCode],
    }),
  );
}

// Misuse the types must catch (compiled, never run).
export function refused(): void {
  // @ts-expect-error a title is a string
  void client.POST("/todos", { body: { title: 5 } });
  // @ts-expect-error the todo's id goes in the path
  void client.GET("/todos/{todo_id}", {});
  // @ts-expect-error no such route
  void client.GET("/todo", {});
  // @ts-expect-error sign-up needs a password
  void client.POST("/api/auth/sign-up/email", { body: { name: "x", email: "x@example.com" } });
}

await main();
