// Between the API's RFC 3339 instants and the browser's datetime-local inputs (local time).

const pad = (n: number, w = 2) => String(n).padStart(w, "0");

/** "2026-01-31T17:00" (local) → "2026-01-31T17:00:00+01:00"; "" → null. */
export function fromLocalInput(v: string): { value: string | null } | { error: string } {
  if (v === "") return { value: null };
  const m = /^(\d{4,6})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(v);
  if (!m) return { error: "must be a date and time" };
  const [y, mo, d, h, mi] = m.slice(1).map(Number) as [number, number, number, number, number];
  // The API's range (years 0001–9998); the picker goes further.
  if (y < 1 || y > 9998) return { error: "must be a date-time in the years 0001 to 9998" };
  const local = new Date(2000, mo - 1, d, h, mi);
  local.setFullYear(y); // years below 100 would otherwise mean 19xx
  const off = -local.getTimezoneOffset();
  const abs = Math.abs(off);
  return {
    value: `${pad(y, 4)}-${pad(mo)}-${pad(d)}T${pad(h)}:${pad(mi)}:00${off < 0 ? "-" : "+"}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`,
  };
}

/** An API instant as a datetime-local value. */
export function toLocalInput(iso: string | null): string {
  if (!iso) return "";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return "";
  return `${pad(t.getFullYear(), 4)}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}T${pad(t.getHours())}:${pad(t.getMinutes())}`;
}

const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** An API instant for people. */
export const show = (iso: string): string => format.format(new Date(iso));
