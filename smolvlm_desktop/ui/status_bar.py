"""The status bar: which model, variant and provider actually ran, and how fast."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar

from ..engine.types import GenerationResult, ModelInfo
from ..worker import ERROR, LOADING, READY, UNLOADED


GRAPH_LABELS = {"vision_encoder": "vision", "embed_tokens": "embed", "decoder_model_merged": "text"}


def provider_text(providers: dict[str, str]) -> str:
    """'CPU', or per graph when they differ ('vision: DirectML, embed: CPU, text: CPU')."""
    from ..engine.runtime import PROVIDER_LABELS  # onnxruntime is loaded once a model is

    labels = {g: PROVIDER_LABELS.get(p, p) for g, p in providers.items()}
    kinds = sorted(set(labels.values()))
    if len(kinds) == 1:
        return kinds[0]
    return ", ".join(f"{GRAPH_LABELS.get(g, g)}: {p}" for g, p in labels.items())


def fallback_text(fallback: dict[str, str]) -> str:
    """'DirectML unavailable' from {graph: 'dml: reason; ...'} (the engine's fallback notes)."""
    from ..engine.runtime import PROVIDER_LABELS

    tried: list[str] = []
    for reason in fallback.values():
        for part in reason.split("; "):
            label = PROVIDER_LABELS.get(part.split(":", 1)[0].strip())
            if label and label != "CPU" and label not in tried:
                tried.append(label)
    return f"{' and '.join(tried) if tried else 'the chosen accelerator'} unavailable"


def fallback_details(fallback: dict[str, str]) -> str:
    return "\n".join(f"{GRAPH_LABELS.get(g, g)} runs on the CPU instead: {why}"
                      for g, why in fallback.items())


class StatusBar(QStatusBar):
    def __init__(self) -> None:
        super().__init__()
        self.model_label = QLabel("No model")
        self.model_label.setAccessibleName("Model status")
        self.speed_label = QLabel("")
        self.speed_label.setAccessibleName("Speed of the last answer")
        self._wait = ""  # where the last answer's wait went (its tooltip)
        self._kept = ""  # what is kept in memory for follow-ups
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # indeterminate: model loading has no measurable progress
        self.busy.setMaximumWidth(120)
        self.busy.setAccessibleName("Loading")
        self.busy.hide()
        self.addPermanentWidget(self.busy)
        self.addPermanentWidget(self.speed_label)
        self.addPermanentWidget(self.model_label)

    def set_model_state(self, state: str, info: ModelInfo | None, message: str,
                        fallback: dict[str, str] | None = None) -> None:
        """fallback: graphs that did not get the accelerator asked for, and why."""
        self.busy.setVisible(state == LOADING)
        if state == READY and info is not None:
            provider = provider_text(info.providers)
            if fallback:
                provider += f" ({fallback_text(fallback)})"
            self.model_label.setText(f"{info.name} · {info.variant} · {provider}")
            details = fallback_details(fallback) if fallback else ""
            self.model_label.setToolTip("\n".join(x for x in (info.folder, details) if x))
            if fallback:
                message = ""  # the label and its tooltip say it; no second, vaguer sentence
            if self.currentMessage().startswith("Loading"):
                self.clearMessage()  # loaded: "Loading…" must not linger next to the model name
        elif state == LOADING:
            self.model_label.setText(message or "Loading the model…")
        elif state == UNLOADED:
            self.model_label.setText("Model unloaded")
            self.model_label.setToolTip(message)
        elif state == ERROR:
            self.model_label.setText("Model failed to load")
            self.model_label.setToolTip(message)
        if message and state == LOADING:
            pass  # the model label on the right says it; twice read as two loads
        elif message and state != READY:
            self.showMessage(message, 8000)
        elif message:
            self.showMessage(f"Note: {message}", 8000)

    def set_timings(self, result: GenerationResult) -> None:
        t = result.timings
        rest = max(0.0, t.first_token_ms - t.image_ms - t.prefill_ms)
        self.speed_label.setText(f"first token {t.first_token_ms:.0f} ms (image {t.image_ms:.0f} + "
                                 f"prompt {t.prefill_ms:.0f} + {rest:.0f}) · "
                                 f"{t.tokens_per_second:.1f} tokens/s · {t.new_tokens} tokens")
        self._wait = wait_split(result)
        self._show_tooltip()

    def set_kept_memory(self, conversations: int, features: int) -> None:
        """What is kept so that follow-ups start at once (dropped by the idle unload)."""
        mb = 1024 * 1024
        self._kept = (f"Kept for follow-ups: {conversations / mb:.0f} MB of conversation, "
                      f"{features / mb:.0f} MB of image features") if conversations or features else ""
        self._show_tooltip()

    def _show_tooltip(self) -> None:
        self.speed_label.setToolTip("\n".join(p for p in (self._wait, self._kept) if p))


def wait_split(result: GenerationResult) -> str:
    """Where the wait for the first token went: reading the images, reading the prompt (what
    of it a kept conversation did not already hold), then choosing the first token."""
    t = result.timings
    rest = max(0.0, t.first_token_ms - t.image_ms - t.prefill_ms)
    image = f"image {t.image_ms:.0f} ms ({t.tiles_read} part{'s' if t.tiles_read != 1 else ''} read)"
    prompt = f"prompt {t.prefill_ms:.0f} ms ({t.prompt_tokens - t.cached_tokens} of {t.prompt_tokens} tokens read)"
    return f"first token {t.first_token_ms:.0f} ms = {image} + {prompt} + first token {rest:.0f} ms"
