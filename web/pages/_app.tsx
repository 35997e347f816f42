import "../styles/globals.css";

import type { AppProps } from "next/app";
import { useEffect } from "react";

import { schemas } from "../lib/api";
import { start } from "../lib/session";

export default function App({ Component, pageProps }: AppProps) {
  useEffect(() => {
    start();
    void schemas(); // the forms' validation, fetched once the page is interactive
  }, []);
  return <Component {...pageProps} />;
}
