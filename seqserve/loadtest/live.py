"""The live display while levels run: one status line (rich), redrawn twice a second from the event
loop itself (no display thread competing for the GIL), and a line per finished level."""

from __future__ import annotations


class LiveDisplay:
    def __init__(self, console, levels: tuple, mode: str):
        from rich.live import Live

        self.console, self.levels, self.mode = console, levels, mode
        self.live = Live(console=console, auto_refresh=False, transient=True)

    def __enter__(self) -> "LiveDisplay":
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def progress(self, s: dict) -> None:
        from rich.text import Text

        unit = "concurrent" if self.mode == "concurrency" else "req/s"
        if s["requests"]:
            done = f"{s['counted']}/{s['requests']} requests"
        elif s["planned_s"]:
            done = f"{s['elapsed_s']:.1f}/{s['planned_s']:.1f} s"
        else:
            done = f"{s['elapsed_s']:.1f} s"
        lat = (f"p50 {s['p50_ms']:.2f} p99 {s['p99_ms']:.2f} ms" if s["p50_ms"] is not None else "no answers yet")
        errors = f" · [red]{s['errors']} errors[/]" if s["errors"] else ""
        line = (f"[bold]{s['index'] + 1}/{len(self.levels)}[/] {s['level']:g} {unit} · {s['phase']} {done} · "
                f"{s['rate']:.0f}/s · {lat} · {s['in_flight']} in flight{errors} [dim]· Ctrl-C stops[/]")
        self.live.update(Text.from_markup(line), refresh=True)

    def level_done(self, lv: dict) -> None:
        lat = lv["latency_ms"]
        p50 = "-" if lat["p50"] is None else f"{lat['p50']:.3f}"
        p99 = "-" if lat["p99"] is None else f"{lat['p99']:.3f}"
        self.console.print(f"  {lv['level']:g}: {lv['throughput_rps']:.1f} req/s, p50 {p50} ms, p99 {p99} ms, "
                           f"{lv['errors']} errors" + (" (interrupted)" if lv["interrupted"] else ""), highlight=False)
