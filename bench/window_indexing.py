"""The window while it indexes: how late the GUI thread's events come, and how soon the indexer
gives way to a chat.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.window_indexing [--model-dir DIR] [--images 120]

Opens the real main window (offscreen, a scratch data folder) on the bundled demo chat model,
with the embedding model set to bench.clip_speed's random-weight full-size CLIP ViT-B/32 (int8,
built there on first use), and starts "Index a folder…" on N 1024x768 JPEGs. Meanwhile:

* a 10 ms timer on the GUI thread records how late each tick comes: the delay a click or a
  keystroke would see. Measured first with nothing running (idle), then while indexing;
* after a few images a chat is asked: the time from the chat's start to the last image the
  indexer finishes after it is how long indexing competes with the chat (at most one image:
  the indexer waits for the worker before each image).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def lag_while(app, seconds: float | None = None, until=None) -> list[float]:  # type: ignore[no-untyped-def]
    """Milliseconds each 10 ms timer tick came late, for `seconds` or until `until()`."""
    from PySide6.QtCore import QTimer

    lags: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        lags.append(max(0.0, (now - last[0]) * 1000 - 10))
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    end = time.perf_counter() + (seconds or 3600)
    while time.perf_counter() < end and not (until and until()):
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    return lags


def summary(lags: list[float]) -> str:
    ordered = sorted(lags)
    p99 = ordered[int(0.99 * (len(ordered) - 1))]
    return (f"median {statistics.median(lags):.1f} ms, p99 {p99:.1f} ms, max {max(lags):.1f} ms "
            f"over {len(lags)} ticks")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "smolvlm-bench-clip-b32")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--chat-after", type=int, default=20, help="ask a chat after this many images")
    args = parser.parse_args()
    from bench.clip_speed import build, photos

    build(args.model_dir, "clip")
    scratch = Path(tempfile.mkdtemp(prefix="smolvlm-bench-window-"))
    for var in ("DATA", "CONFIG", "CACHE"):
        os.environ[f"SMOLVLM_{var}_DIR"] = str(scratch / var.lower())
    os.environ["SMOLVLM_EMBEDDING_MODEL"] = str(args.model_dir)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    images = photos(scratch / "photos", args.images, (1024, 768))

    from PySide6.QtWidgets import QApplication

    from smolvlm_desktop.settings import Settings
    from smolvlm_desktop.ui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    window = MainWindow(Settings(max_new_tokens=256, provider="cpu", threads=2, idle_unload_minutes=0),
                        persist=True)  # a scratch data folder: the library is opened there
    window.show()
    window.start_model(None, demo=True)
    lag_while(app, until=lambda: window.model_state in ("ready", "error"))
    idle = lag_while(app, seconds=3)

    progress: list[float] = []  # when each image was finished (the indexing thread's clock)
    window.library.index_progress.connect(lambda p: progress.append(time.perf_counter()) if p.done else None)
    chat: dict[str, float] = {}
    window.library.index_folder(str(images[0].parent))
    before = lag_while(app, until=lambda: len(progress) >= args.chat_after)
    # plain functions: they run in the worker thread, at the moment the chat starts and ends
    window.worker.job_started.connect(lambda _job: chat.setdefault("start", time.perf_counter()))
    window.worker.job_finished.connect(lambda _job: chat.setdefault("end", time.perf_counter()))
    window.chat.ask("What is in this picture?")
    during = lag_while(app, until=lambda: "end" in chat)
    after = lag_while(app, until=lambda: window.library.indexing is None)
    under_way = next(t for t in progress if t > chat["start"])  # the image being embedded
    overlap_ms = 1000 * (min(under_way, chat["end"]) - chat["start"])
    rate = (len(progress) - 1) / (progress[-1] - progress[0] - (chat["end"] - chat["start"]))
    print(f"window indexing {args.images} 1024x768 JPEGs with a random-weight CLIP ViT-B/32 int8, "
          f"2 threads (load average {os.getloadavg()[0]:.1f}): {rate:.1f} images/s")
    print(f"  GUI event lag, idle:     {summary(idle)}")
    print(f"  GUI event lag, indexing: {summary(before + after)}")
    print(f"  GUI event lag, the chat answering (indexing waiting): {summary(during)}")
    print(f"  a chat asked after {args.chat_after} images ran {1000 * (chat['end'] - chat['start']):.0f} ms; "
          f"the image under way finished {1000 * (under_way - chat['start']):.0f} ms after the chat "
          f"started, so indexing ran beside the chat for {overlap_ms:.0f} ms, then waited")
    window.close()


if __name__ == "__main__":
    main()
