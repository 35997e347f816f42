import Link from "next/link";
import { useRouter } from "next/router";
import { type FormEvent, useCallback, useEffect, useRef, useState } from "react";

import { Alert, Field, Page, focusFirst, splitErrors } from "../components/ui";
import { type Task, createTask, deleteTask, listTasks, schemas, updateTask } from "../lib/api";
import { fromLocalInput, show } from "../lib/dates";
import { ApiError, SignedOutError } from "../lib/problem";
import type { FieldErrors, TaskCreate } from "../lib/schemas";
import { type User, useSession } from "../lib/session";

type Filter = "all" | "open" | "done";
const FILTERS: { value: Filter; label: string; heading: string }[] = [
  { value: "all", label: "All", heading: "All tasks" },
  { value: "open", label: "Open", heading: "Open tasks" },
  { value: "done", label: "Completed", heading: "Completed tasks" },
];
const completedOf = (f: Filter) => (f === "all" ? undefined : f === "done");

export default function Tasks() {
  const session = useSession();
  const router = useRouter();
  useEffect(() => {
    if (session.status === "signed-out") void router.replace("/login");
  }, [session.status, router]);

  return (
    <Page title="Your tasks">
      <h1 className="page-title">Your tasks</h1>
      {session.status === "signed-in" ? (
        <TaskBoard key={session.user.id} user={session.user} />
      ) : (
        <p className="card" role="status">
          Loading your tasks…
        </p>
      )}
    </Page>
  );
}

function TaskBoard({ user }: { user: User }) {
  const [filter, setFilter] = useState<Filter>("all");
  const [items, setItems] = useState<Task[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loaded, setLoaded] = useState(false);
  const [loading, setLoading] = useState(false);
  const [alert, setAlert] = useState<unknown>();
  const [status, setStatus] = useState("");
  const generation = useRef(0);

  const fail = useCallback((e: unknown) => {
    // The session module has already switched to signed-out; the page follows it.
    if (!(e instanceof SignedOutError)) setAlert(e);
  }, []);

  const load = useCallback(
    async (f: Filter, after: string | null) => {
      const mine = after ? generation.current : ++generation.current;
      setLoading(true);
      setAlert(undefined);
      try {
        const page = await listTasks(user.id, { completed: completedOf(f), cursor: after ?? undefined });
        if (mine !== generation.current) return; // the filter changed meanwhile
        setItems((prev) => (after ? [...prev, ...page.items] : page.items));
        setCursor(page.next_cursor);
        setLoaded(true);
      } catch (e) {
        fail(e);
      } finally {
        setLoading(false);
      }
    },
    [user.id, fail],
  );

  useEffect(() => {
    void load(filter, null);
  }, [filter, load]);

  const shows = (t: Task) => filter === "all" || t.completed === (filter === "done");

  async function toggle(t: Task) {
    setAlert(undefined);
    try {
      const next = await updateTask(user.id, t.id, { completed: !t.completed });
      setItems((prev) => prev.flatMap((x) => (x.id !== t.id ? [x] : shows(next) ? [next] : [])));
      setStatus(`“${next.title}” marked as ${next.completed ? "completed" : "open"}.`);
    } catch (e) {
      fail(e);
    }
  }

  async function remove(t: Task) {
    setAlert(undefined);
    try {
      await deleteTask(user.id, t.id);
      setItems((prev) => prev.filter((x) => x.id !== t.id));
      setStatus(`“${t.title}” deleted.`);
      document.getElementById("tasks-heading")?.focus();
    } catch (e) {
      fail(e);
    }
  }

  return (
    <>
      <NewTask
        user={user}
        onCreated={(t) => {
          if (shows(t)) setItems((prev) => [t, ...prev]);
          setStatus(`“${t.title}” added.`);
        }}
      />
      <section className="card" aria-labelledby="tasks-heading">
        <div className="list-head">
          <h2 id="tasks-heading" tabIndex={-1}>
            {FILTERS.find((f) => f.value === filter)?.heading}
          </h2>
          <fieldset className="filter">
            <legend>Show</legend>
            {FILTERS.map((f) => (
              <label key={f.value}>
                <input
                  type="radio"
                  name="filter"
                  value={f.value}
                  checked={filter === f.value}
                  onChange={() => setFilter(f.value)}
                />
                {f.label}
              </label>
            ))}
          </fieldset>
        </div>
        <p className="sr-only" role="status">
          {status}
        </p>
        <Alert error={alert} />
        {loaded && items.length === 0 && (
          <p className="empty">
            {filter === "all" ? "No tasks yet. Add your first one above." : `No ${filter === "done" ? "completed" : "open"} tasks.`}
          </p>
        )}
        <ul className="tasks" aria-busy={loading}>
          {items.map((t) => (
            <TaskItem key={t.id} task={t} onToggle={() => toggle(t)} onDelete={() => remove(t)} />
          ))}
        </ul>
        {cursor && (
          <button type="button" className="more" disabled={loading} onClick={() => void load(filter, cursor)}>
            {loading ? "Loading…" : "Load more"}
          </button>
        )}
      </section>
    </>
  );
}

function TaskItem({ task, onToggle, onDelete }: { task: Task; onToggle: () => void; onDelete: () => void }) {
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const id = `task-${task.id}`;
  const overdue = !task.completed && task.due_at !== null && Date.parse(task.due_at) < Date.now();
  const run = (fn: () => void | Promise<void>) => async () => {
    setBusy(true);
    try {
      await fn();
    } finally {
      setBusy(false);
    }
  };
  return (
    <li className={task.completed ? "task done" : "task"} data-testid="task">
      <input
        type="checkbox"
        id={id}
        checked={task.completed}
        disabled={busy}
        onChange={run(onToggle)}
        aria-describedby={task.description || task.due_at ? `${id}-meta` : undefined}
      />
      <div className="body">
        <label htmlFor={id} className="title">
          {task.title}
        </label>
        {(task.description || task.due_at) && (
          <div id={`${id}-meta`} className="meta">
            {task.description && <p className="description">{task.description}</p>}
            {task.due_at && (
              <p className={overdue ? "due overdue" : "due"}>
                {overdue ? "Overdue: " : "Due "}
                <time dateTime={task.due_at}>{show(task.due_at)}</time>
              </p>
            )}
          </div>
        )}
      </div>
      <div className="actions">
        {confirming ? (
          <>
            <button type="button" className="danger" disabled={busy} onClick={run(onDelete)} autoFocus>
              Delete<span className="sr-only"> “{task.title}”</span> for good
            </button>
            <button type="button" className="quiet" onClick={() => setConfirming(false)}>
              Keep
            </button>
          </>
        ) : (
          <>
            <Link className="button quiet" href={{ pathname: "/edit", query: { id: task.id } }}>
              Edit<span className="sr-only"> “{task.title}”</span>
            </Link>
            <button type="button" className="quiet" onClick={() => setConfirming(true)}>
              Delete<span className="sr-only"> “{task.title}”</span>
            </button>
          </>
        )}
      </div>
    </li>
  );
}

const NEW_FIELDS = ["title", "description", "due_at"];

function NewTask({ user, onCreated }: { user: User; onCreated: (t: Task) => void }) {
  const [title, setTitle] = useState("");
  const [description, setDescription] = useState("");
  const [due, setDue] = useState("");
  const [errors, setErrors] = useState<FieldErrors>({});
  const [alert, setAlert] = useState<unknown>();
  const [busy, setBusy] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setAlert(undefined);
    const { validate, TaskCreate } = await schemas();
    const dueAt = fromLocalInput(due);
    const body: TaskCreate = { title };
    if (description !== "") body.description = description;
    if ("value" in dueAt && dueAt.value) body.due_at = dueAt.value;
    const v = validate(TaskCreate, body);
    const found: FieldErrors = v.ok ? {} : v.errors;
    if ("error" in dueAt) found.due_at ??= dueAt.error;
    if (!v.ok || "error" in dueAt) {
      setErrors(found);
      focusFirst(found, NEW_FIELDS, "new-");
      return;
    }
    setErrors({});
    setBusy(true);
    try {
      onCreated(await createTask(user.id, v.value));
      setTitle("");
      setDescription("");
      setDue("");
      document.getElementById("new-title")?.focus();
    } catch (err) {
      if (err instanceof ApiError && err.errors.length) {
        const split = splitErrors(err.errors, NEW_FIELDS);
        setErrors(split.fields);
        setAlert(split.rest.join(" ") || undefined);
        focusFirst(split.fields, NEW_FIELDS, "new-");
      } else if (!(err instanceof SignedOutError)) {
        setAlert(err);
      }
    } finally {
      setBusy(false);
    }
  }

  return (
    <section className="card" aria-labelledby="new-heading">
      <h2 id="new-heading">New task</h2>
      <Alert error={alert} />
      <form onSubmit={submit} noValidate className="new-task">
        <Field id="new-title" label="Title" value={title} onChange={setTitle} error={errors.title} />
        <Field id="new-description" label="Description (optional)" multiline value={description} onChange={setDescription} error={errors.description} />
        <Field
          id="new-due_at"
          label="Due (optional)"
          type="datetime-local"
          min="0001-01-01T00:00"
          max="9998-12-31T23:59"
          value={due}
          onChange={setDue}
          error={errors.due_at}
        />
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Adding…" : "Add task"}
        </button>
      </form>
    </section>
  );
}
