import Link from "next/link";
import { useRouter } from "next/router";
import { type FormEvent, useEffect, useState } from "react";

import { Alert, Field, Page, focusFirst, splitErrors } from "../components/ui";
import { type Task, getTask, schemas, updateTask } from "../lib/api";
import { fromLocalInput, toLocalInput } from "../lib/dates";
import { ApiError, SignedOutError } from "../lib/problem";
import type { FieldErrors, TaskUpdate } from "../lib/schemas";
import { type User, useSession } from "../lib/session";

const FIELDS = ["title", "description", "due_at"];

/** /edit?id=<task id>: one task's title, description, due date and state. */
export default function Edit() {
  const session = useSession();
  const router = useRouter();
  useEffect(() => {
    if (session.status === "signed-out") void router.replace("/login");
  }, [session.status, router]);
  const id = typeof router.query.id === "string" ? router.query.id : undefined;

  return (
    <Page title="Edit task">
      {session.status === "signed-in" && router.isReady ? (
        <Editor key={`${session.user.id}/${id}`} user={session.user} id={id} />
      ) : (
        <p className="card" role="status">
          Loading…
        </p>
      )}
    </Page>
  );
}

function Editor({ user, id }: { user: User; id: string | undefined }) {
  const router = useRouter();
  const [task, setTask] = useState<Task | null>(null);
  const [title, setTitle] = useState("");
  const [description, setDescription] = useState("");
  const [due, setDue] = useState("");
  const [completed, setCompleted] = useState(false);
  const [errors, setErrors] = useState<FieldErrors>({});
  const [alert, setAlert] = useState<unknown>();
  const [missing, setMissing] = useState(false);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (!id) {
      setMissing(true);
      return;
    }
    getTask(user.id, id).then(
      (t) => {
        setTask(t);
        setTitle(t.title);
        setDescription(t.description ?? "");
        setDue(toLocalInput(t.due_at));
        setCompleted(t.completed);
      },
      (e) => {
        if (e instanceof ApiError && e.status === 404) setMissing(true);
        else if (!(e instanceof SignedOutError)) setAlert(e);
      },
    );
  }, [user.id, id]);

  async function submit(e: FormEvent) {
    e.preventDefault();
    if (!task) return;
    setAlert(undefined);
    // Only what changed: PATCH leaves absent fields alone, null clears.
    const dueAt = fromLocalInput(due);
    const changes: TaskUpdate = {};
    if (title !== task.title) changes.title = title;
    if (description !== (task.description ?? "")) changes.description = description === "" ? null : description;
    if (completed !== task.completed) changes.completed = completed;
    if ("value" in dueAt && due !== toLocalInput(task.due_at)) changes.due_at = dueAt.value;
    if (Object.keys(changes).length === 0 && !("error" in dueAt)) {
      await router.push("/");
      return;
    }
    const { validate, TaskUpdate } = await schemas();
    const v = validate(TaskUpdate, changes);
    const found: FieldErrors = v.ok ? {} : v.errors;
    if ("error" in dueAt) found.due_at ??= dueAt.error;
    if (!v.ok || "error" in dueAt) {
      setErrors(found);
      focusFirst(found, FIELDS, "edit-");
      return;
    }
    setErrors({});
    setBusy(true);
    try {
      await updateTask(user.id, task.id, v.value);
      await router.push("/");
    } catch (err) {
      if (err instanceof ApiError && err.errors.length) {
        const split = splitErrors(err.errors, FIELDS);
        setErrors(split.fields);
        setAlert(split.rest.join(" ") || undefined);
        focusFirst(split.fields, FIELDS, "edit-");
      } else if (!(err instanceof SignedOutError)) {
        setAlert(err);
      }
    } finally {
      setBusy(false);
    }
  }

  if (missing) {
    return (
      <section className="card narrow" aria-labelledby="title">
        <h1 id="title">Task not found</h1>
        <p>That task no longer exists, or it is not yours.</p>
        <p>
          <Link href="/">Back to your tasks</Link>
        </p>
      </section>
    );
  }
  return (
    <section className="card narrow" aria-labelledby="title">
      <h1 id="title">Edit task</h1>
      <Alert error={alert} />
      {task ? (
        <form onSubmit={submit} noValidate>
          <Field id="edit-title" label="Title" value={title} onChange={setTitle} error={errors.title} />
          <Field id="edit-description" label="Description (optional)" multiline value={description} onChange={setDescription} error={errors.description} />
          <Field
            id="edit-due_at"
            label="Due (optional)"
            type="datetime-local"
            min="0001-01-01T00:00"
            max="9998-12-31T23:59"
            value={due}
            onChange={setDue}
            error={errors.due_at}
          />
          <div className="check">
            <input id="edit-completed" type="checkbox" checked={completed} onChange={(e) => setCompleted(e.target.checked)} />
            <label htmlFor="edit-completed">Completed</label>
          </div>
          <div className="row">
            <button type="submit" className="primary" disabled={busy}>
              {busy ? "Saving…" : "Save changes"}
            </button>
            <Link className="button quiet" href="/">
              Cancel
            </Link>
          </div>
        </form>
      ) : (
        <p role="status">Loading the task…</p>
      )}
    </section>
  );
}
