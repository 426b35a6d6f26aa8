"""The top line: who and where on the left, the clock and the link to the daemon on the right."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class Header(Widget):
    DEFAULT_CSS = """
    Header { height: 1; background: $primary-background; }
    """
    station = reactive("modality-agent")
    driver = reactive("")
    operator = reactive("")
    clock = reactive("")
    link = reactive("connecting…")  # "connected", "DISCONNECTED — retrying", ...

    def render(self) -> Text:
        left = " · ".join(x for x in (self.station, self.driver, self.operator) if x)
        right = f"{self.clock} · {self.link}" if self.clock else self.link
        gap = max(1, self.size.width - len(left) - len(right) - 2)
        text = Text(f" {left}{' ' * gap}{right} ")
        if self.link.startswith("DISCONNECTED"):
            text.stylize("bold reverse", len(text) - len(self.link) - 1, len(text) - 1)
        return text
