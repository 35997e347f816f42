import { Head, Html, Main, NextScript } from "next/document";

import { API_ORIGIN } from "../lib/config";

// vercel.json sends the site's Content-Security-Policy; a static host cannot put the API
// origin of each build into it, so this second policy (browsers enforce both) narrows
// connect-src from any https origin to exactly this build's API.
const connect = `connect-src 'self' ${API_ORIGIN}`;

export default function Document() {
  return (
    <Html lang="en">
      <Head>
        <meta httpEquiv="Content-Security-Policy" content={connect} />
        <meta name="description" content="Your tasks, newest first." />
        <meta name="color-scheme" content="light dark" />
        <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
      </Head>
      <body>
        <Main />
        <NextScript />
      </body>
    </Html>
  );
}
