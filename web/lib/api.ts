// The API's task and account calls, typed. Request bodies pass through their Zod schema
// (lib/schemas.ts) before they leave; failures arrive as ApiError / NetworkError.
import { problemOf } from "./problem";
import type { RegisterRequest, TaskCreate, TaskUpdate } from "./schemas";
import { apiFetch, authorized } from "./session";

/**
 * Zod and the schemas, loaded after the page is interactive (pages/_app.tsx starts the
 * download): they are needed when a form is sent, not to show the page, and keeping them out
 * of the first load keeps every page inside its JavaScript budget (scripts/size.mjs).
 */
export const schemas = () => import("./schemas");

export type Task = {
  id: string;
  title: string;
  description: string | null;
  completed: boolean;
  due_at: string | null;
  created_at: string;
  updated_at: string;
};
export type TaskPage = { items: Task[]; next_cursor: string | null };

async function ok<T>(res: Response): Promise<T> {
  if (!res.ok) throw await problemOf(res);
  return (res.status === 204 ? undefined : await res.json()) as T;
}

const json = (method: string, body: unknown): RequestInit => ({
  method,
  headers: { "content-type": "application/json" },
  body: JSON.stringify(body),
});

const tasks = (user: string) => `/api/users/${encodeURIComponent(user)}/tasks`;
const task = (user: string, id: string) => `${tasks(user)}/${encodeURIComponent(id)}`;

export async function register(body: RegisterRequest): Promise<unknown> {
  const { RegisterRequest } = await schemas();
  return apiFetch("/auth/register", { ...json("POST", RegisterRequest.parse(body)), credentials: "omit" }).then(ok);
}

/** Newest first; `cursor` is the previous page's next_cursor. */
export function listTasks(user: string, q: { completed?: boolean; cursor?: string }): Promise<TaskPage> {
  const p = new URLSearchParams();
  if (q.completed !== undefined) p.set("completed", String(q.completed));
  if (q.cursor) p.set("cursor", q.cursor);
  const qs = p.toString();
  return authorized(tasks(user) + (qs ? `?${qs}` : "")).then(ok<TaskPage>);
}

export const getTask = (user: string, id: string): Promise<Task> => authorized(task(user, id)).then(ok<Task>);

export async function createTask(user: string, body: TaskCreate): Promise<Task> {
  const { TaskCreate } = await schemas();
  return authorized(tasks(user), json("POST", TaskCreate.parse(body))).then(ok<Task>);
}

export async function updateTask(user: string, id: string, body: TaskUpdate): Promise<Task> {
  const { TaskUpdate } = await schemas();
  return authorized(task(user, id), json("PATCH", TaskUpdate.parse(body))).then(ok<Task>);
}

export const deleteTask = (user: string, id: string): Promise<void> =>
  authorized(task(user, id), { method: "DELETE" }).then(ok<void>);
