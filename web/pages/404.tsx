import Link from "next/link";

import { Page } from "../components/ui";

export default function NotFound() {
  return (
    <Page title="Page not found">
      <section className="card narrow" aria-labelledby="title">
        <h1 id="title">Page not found</h1>
        <p>There is nothing at this address.</p>
        <p>
          <Link href="/">Go to your tasks</Link>
        </p>
      </section>
    </Page>
  );
}
