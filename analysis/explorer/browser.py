"""Drive headless Chromium over the DevTools protocol (CDP, via aiohttp's websocket client): open the
explorer, run JavaScript, collect console errors, time the index page.

    python -m analysis.explorer.browser runs/fashion_mnist_usae/main/explorer [more sites] [--runs 5]

writes to ``<site>/browser_timing.json`` (and prints as a Markdown table, with ``build.json``'s build
time and size) the index page's time to interactive:
``performance.now()`` when the table has rendered and handlers are attached (the ``data-ready-ms``
marker the viewer sets), i.e. from navigation start, over fresh page loads; plus any console error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio"]


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page; ``errors`` collects console errors, uncaught exceptions and
    failed loads (as text). Use as a context manager."""

    def __init__(self, profile: str | Path, width: int = 1400, height: int = 1000, timeout: float = 30.0) -> None:
        self.profile, self.size, self.timeout = Path(profile), (width, height), timeout
        self.errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._pending: dict[int, asyncio.Future] = {}
        self._loads = 0
        self._next = 0

    # ----- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Browser":
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + self.timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or self._proc.poll() is not None:
                self.close()
                raise BrowserError("Chromium did not start (no DevToolsActivePort)")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self._loop.run_until_complete(self._connect(port))
        for domain in ("Runtime", "Page", "Log"):
            self.send(f"{domain}.enable")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            if getattr(self, "_ws", None) is not None:
                self._loop.run_until_complete(self._ws.close())
            if getattr(self, "_session", None) is not None:
                self._loop.run_until_complete(self._session.close())
        finally:
            if getattr(self, "_proc", None) is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            self._loop.close()

    async def _connect(self, port: int) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        for _ in range(100):
            try:
                async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = [t for t in await resp.json() if t.get("type") == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise BrowserError("Chromium has no page target")
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = self._loop.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                         for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                self.errors.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                e = params["entry"]
                self.errors.append(f"log: {e.get('text')} {e.get('url', '')}")
            elif method == "Page.loadEventFired":
                self._loads += 1

    # ----- commands -----------------------------------------------------------------------------------
    def send(self, method: str, **params: Any) -> dict:
        async def go():
            self._next += 1
            fut = self._loop.create_future()
            self._pending[self._next] = fut
            await self._ws.send_str(json.dumps({"id": self._next, "method": method, "params": params}))
            return await asyncio.wait_for(fut, self.timeout)

        reply = self._loop.run_until_complete(go())
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]!r}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result.get("result", {}).get("value")

    def pause(self, seconds: float) -> None:
        self._loop.run_until_complete(asyncio.sleep(seconds))

    def wait(self, expression: str, timeout: float | None = None) -> Any:
        """Poll ``expression`` until it is truthy (a navigation in progress is waited out)."""
        deadline = time.time() + (timeout or self.timeout)
        while True:
            try:
                value = self.eval(expression)
                if value:
                    return value
            except BrowserError:
                pass
            if time.time() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            self.pause(0.03)

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait until the viewer says it is ready."""
        loads = self._loads
        self.send("Page.navigate", url=url)
        self._await_load(loads)

    def navigate_by(self, script: str) -> None:
        """Run ``script`` (e.g. a link's click) that loads another document; wait until it is ready."""
        loads = self._loads
        self.eval(script)
        self._await_load(loads)

    def _await_load(self, loads: int) -> None:
        deadline = time.time() + self.timeout
        while self._loads == loads:
            if time.time() > deadline:
                raise BrowserError("page did not load")
            self.pause(0.02)
        self.wait("window.explorerReady === true")


def measure(site: Path, runs: int = 5) -> dict:
    """Time to interactive of ``site``/index.html over ``runs`` fresh loads (ms), and console errors."""
    profile = Path(tempfile.mkdtemp(prefix="explorer-chromium-"))
    try:
        times, errors = [], []
        with Browser(profile) as b:
            for _ in range(runs):
                b.open((site / "index.html").resolve().as_uri() + f"?t={time.time()}")
                times.append(float(b.eval("document.body.getAttribute('data-ready-ms')")))
                rows = int(b.eval("document.querySelectorAll('#table tbody tr').length"))
            total = int(b.eval("window.EXPLORER_INDEX.rows.length"))
            b.eval("document.querySelector('th[data-key=id]').click()")
            start = b.eval("performance.now()")
            b.eval("document.querySelector('th[data-key=H]') && document.querySelector('th[data-key=H]').click()")
            sort_ms = float(b.eval("performance.now()")) - float(start)
            errors = list(b.errors)
        return {"ready_ms": times, "ready_ms_median": statistics.median(times), "rows_rendered": rows,
                "rows_total": total, "resort_ms": sort_ms, "console_errors": errors,
                "chromium": subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True).stdout.strip()}
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> list[dict]:
    """Time each site's index page; write ``browser_timing.json`` into it; print a Markdown table of
    the build (``build.json``) and browser figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sites", type=Path, nargs="+", help="explorer folders (each holds index.html)")
    parser.add_argument("--runs", type=int, default=5, help="fresh page loads to time")
    args = parser.parse_args(argv)
    from common.io import atomic_write_json

    results, lines = [], ["| explorer | pages | build (s) | whole command (s) | threads | size (MB) | index ready "
                          f"(ms, median of {args.runs}) | re-sort (ms) | console errors |",
                          "|---|---|---|---|---|---|---|---|---|"]
    for site in args.sites:
        if not (site / "index.html").is_file():
            raise SystemExit(f"error: '{site}' holds no index.html; build the explorer first")
        result = measure(site, args.runs)
        atomic_write_json(site / "browser_timing.json", result)
        build = json.loads((site / "build.json").read_text()) if (site / "build.json").is_file() else {}
        nan = float("nan")
        lines.append(f"| {site} | {build.get('latents', '?')} | {build.get('timings_s', {}).get('total', nan):.1f} "
                     f"| {build.get('process_s') or nan:.1f} | {build.get('threads', '?')} | {build.get('bytes', 0) / 1e6:.1f} | {result['ready_ms_median']:.0f} "
                     f"| {result['resort_ms']:.0f} | {len(result['console_errors'])} |")
        results.append(result)
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
