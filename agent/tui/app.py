"""The technologist's terminal UI: the app, its tabs, the link to the daemon, the idle lock.

Everything shown comes from the daemon over the control socket (agent/tui/link.py): requests
run off the UI thread, events arrive on the link's thread and are posted here as messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Footer, Static, TabbedContent, TabPane

from agent.config import Config
from agent.events import Event
from agent.tui.alarm_bar import AlarmBar
from agent.tui.alarms_tab import AlarmsTab
from agent.tui.board import Board
from agent.tui.delivery_tab import DeliveryTab
from agent.tui.exam_tab import ExamTab
from agent.tui.header import Header
from agent.tui.help import HelpScreen
from agent.tui.link import Link, LinkError
from agent.tui.signin import SignInScreen
from agent.tui.worklist_tab import WorklistTab

REFRESH_OPS = ("status", "exam.status", "queue")
SLOW_S = 1.0  # a request pending longer than this shows "waiting for the agent…"


class LinkUp(Message):
    def __init__(self, hello: dict[str, Any]) -> None:
        super().__init__()
        self.hello = hello


class LinkDown(Message):
    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class DaemonEvent(Message):
    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class AgentApp(App[int]):
    TITLE = "modality-agent"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #banner { height: 1; background: $warning; color: $text; text-style: bold;
              content-align: center middle; display: none; }
    TabbedContent { height: 1fr; }
    TabPane { padding: 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "tab('worklist')", "tabs", key_display="1-4"),
        Binding("2", "tab('exam')", show=False),
        Binding("3", "tab('delivery')", show=False),
        Binding("4", "tab('alarms')", show=False),
        Binding("f1", "help", "help", key_display="F1"),
        Binding("question_mark", "help", show=False),
        Binding("a", "acknowledge", "ack alarm"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+q", "quit", show=False, priority=True),
    ]

    def __init__(self, cfg: Config, now: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.now = now or (lambda: datetime.now().astimezone())
        self.link = Link(cfg.agent.control_socket)
        self.board = Board()
        self.connected = False
        self.operator = ""
        self.signed_in = False
        self._unsent_audit: list[tuple[str, str]] = []  # (op, operator) while disconnected
        self._dirty: set[str] = set()
        self._asked_soon: set[str] = set()
        self._pending: dict[int, tuple[str, float]] = {}
        self._next_request = 0
        self._last_input = time.monotonic()
        self.header = Header()

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield self.header
        yield Static("▓▓ SIMULATED HARDWARE — images are not a patient's ▓▓", id="banner")
        with TabbedContent(initial="worklist"):
            with TabPane("1 Worklist", id="worklist"):
                yield WorklistTab()
            with TabPane("2 Exam", id="exam"):
                yield ExamTab()
            with TabPane("3 Delivery", id="delivery"):
                yield DeliveryTab()
            with TabPane("4 Alarms", id="alarms"):
                yield AlarmsTab()
        yield AlarmBar()
        yield Footer()

    def on_mount(self) -> None:
        header = self.header
        header.station = self.cfg.agent.ae_title
        header.driver = self.cfg.hardware.driver
        self.set_interval(0.2, self._paint)
        self.set_interval(1.0, self._tick)
        self._tick()
        self.link.start(
            up=lambda hello: self.post_message(LinkUp(hello)),
            event=lambda e: self.post_message(DaemonEvent(e)),
            down=lambda reason: self.post_message(LinkDown(reason)),
        )
        self.push_screen(SignInScreen(self.cfg.agent.ae_title), self._signed_in)

    def on_unmount(self) -> None:
        self.link.stop()  # only our connection: the daemon goes on

    # -- the link -------------------------------------------------------------------------

    async def ask(
        self, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """A request off the UI thread; the header says so while it is slow."""
        self._next_request += 1
        ticket = self._next_request
        self._pending[ticket] = (op, time.monotonic())
        try:
            return await self.link.ask(op, args, timeout)
        finally:
            self._pending.pop(ticket, None)

    def on_link_up(self, message: LinkUp) -> None:
        self.connected = True
        self.board.hello = message.hello
        self.board.last_seq = 0
        self.query_one("#banner").display = bool(message.hello.get("simulated"))
        self.header.driver = str(message.hello.get("driver", self.cfg.hardware.driver))
        for op in REFRESH_OPS:
            self.refresh_op(op)
        self.refresh_worklist()
        self.check_destinations()
        while self._unsent_audit:
            op, name = self._unsent_audit.pop(0)
            self._audit(op, name)
        self._tick()

    def on_link_down(self, message: LinkDown) -> None:
        if self.connected:
            self.log.warning(f"lost the daemon: {message.reason}")
        self.connected = False
        self._tick()

    def on_daemon_event(self, message: DaemonEvent) -> None:
        e = message.event
        changes = self.board.apply(e.seq, e.event, e.data)
        self._dirty |= changes.parts
        for op in changes.ask:
            self.ask_soon(op)

    def ask_soon(self, op: str, delay: float = 0.3) -> None:
        """Ask `op` again shortly, once for a burst of events (slices come by the hundred)."""
        if op in self._asked_soon:
            return
        self._asked_soon.add(op)

        def go() -> None:
            self._asked_soon.discard(op)
            self.refresh_op(op)

        self.set_timer(delay, go)

    def refresh_op(self, op: str) -> None:
        self.run_worker(self._refresh(op), group=op, exclusive=True, exit_on_error=False)

    async def _refresh(self, op: str) -> None:
        try:
            doc = await self.ask(op)
        except LinkError:
            return  # the link's own thread notices a lost daemon and says so
        if op == "status":
            self.board.take_status(doc)
            self._dirty |= {"exam", "alarms"}
        elif op == "exam.status":
            self.board.take_exam_status(doc)
            self._dirty.add("exam")
        elif op == "queue":
            self.board.take_queue(doc)
            self._dirty |= {"delivery", "exam"}

    def refresh_worklist(self) -> None:
        """The kept list at once, then the RIS's answer when it comes."""
        self.run_worker(self._worklist(), group="worklist", exclusive=True, exit_on_error=False)

    async def _worklist(self) -> None:
        if self.cfg.worklist is None:
            self.board.worklist_error = "no [worklist] section in the config"
            self._dirty.add("worklist")
            return
        for args in ({"cached": True}, {}):
            try:
                doc = await self.ask(
                    "worklist", args, timeout=self.cfg.worklist.query_timeout_s + 15
                )
            except LinkError as e:
                self.board.worklist_error = getattr(e, "message", str(e))
            else:
                self.board.worklist, self.board.worklist_error = doc, None
                self.board.worklist_at = self.now()
            self._dirty.add("worklist")

    @work(group="echo", exclusive=True, exit_on_error=False)
    async def check_destinations(self) -> None:
        names = [d.name for d in self.cfg.destinations]
        slowest = max(d.connect_timeout_s + d.acse_timeout_s for d in self.cfg.destinations)
        try:
            result = await self.ask("echo", {"names": names}, timeout=len(names) * slowest + 15)
        except LinkError:
            return
        at = self.now()
        for peer in result.get("peers", []):
            self.board.echo[peer["name"]] = (peer, at)
        self._dirty |= {"delivery", "destinations"}

    def exam_started(self, result: dict[str, Any]) -> None:
        self.board.series = {}
        self.board.exam = result["exam"]
        for warning in result.get("warnings") or []:
            self.notify(f"warning: {warning}", severity="warning")
        self.mark("exam")
        self.refresh_op("queue")
        self.action_tab("exam")

    def exam_ended(self, result: dict[str, Any]) -> None:
        self.board.exam = result["exam"]
        self.mark("exam")
        self.refresh_op("queue")

    # -- people ---------------------------------------------------------------------------

    def _signed_in(self, name: str | None) -> None:
        if not name:
            return
        self.operator = name
        self.signed_in = True
        self._last_input = time.monotonic()
        self.header.operator = name
        self._audit("operator.sign_in", name)
        self.query_one(WorklistTab).focus_list()

    def _audit(self, op: str, name: str) -> None:
        if not self.connected:
            self._unsent_audit.append((op, name))
            return

        async def send() -> None:
            try:
                await self.ask(op, {"operator": name})
            except LinkError:
                self._unsent_audit.append((op, name))

        self.run_worker(send(), group="audit", exit_on_error=False)

    def lock(self) -> None:
        if not self.signed_in:
            return
        self.signed_in = False
        self._audit("operator.lock", self.operator)
        while len(self.screen_stack) > 1:  # what was on the screen is not left showing
            self.pop_screen()
        self.push_screen(SignInScreen(self.cfg.agent.ae_title, self.operator), self._signed_in)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key | events.MouseDown):
            self._last_input = time.monotonic()
        await super().on_event(event)

    # -- the clock: header, idle lock, ages ---------------------------------------------

    def _tick(self) -> None:
        # kept, not queried: a tick or a link-down during shutdown finds no screen to ask
        header = self.header
        header.clock = self.now().strftime("%H:%M")
        now = time.monotonic()
        slow = [op for op, since in self._pending.values() if now - since > SLOW_S]
        if not self.connected:
            header.link = "DISCONNECTED — retrying"
        elif slow:
            header.link = f"waiting for the agent ({slow[0]})…"
        else:
            header.link = "connected"
        idle = self.cfg.tui.idle_lock_minutes * 60
        if self.signed_in and now - self._last_input > idle:
            self.lock()
        self._dirty.add("worklist")  # the stale list's age

    def _paint(self) -> None:
        if not self.is_running or self._exit_renderables or self._closing:
            return
        dirty, self._dirty = self._dirty, set()
        now = self.now()
        if "worklist" in dirty:
            self.query_one(WorklistTab).show(self.board, now)
        if "exam" in dirty:
            self.query_one(ExamTab).show(self.board, now)
        if "delivery" in dirty:
            self.query_one(DeliveryTab).show(self.board, now)
        if "alarms" in dirty:
            self.query_one(AlarmsTab).show(self.board)
            waiting = [k for k in self.board.alarms if k not in self.board.acknowledged]
            self.query_one(AlarmBar).show_alarm(self.board.newest_unacknowledged(), len(waiting))
            self.refresh_bindings()
            count = len(self.board.alarms)
            tab = self.query_one(TabbedContent).get_tab("alarms")
            tab.label = f"4 Alarms {count}" if count else "4 Alarms"
        if "destinations" in dirty:
            for screen in self.screen_stack:
                refresh = getattr(screen, "show_health", None)
                if refresh is not None:
                    refresh(self.board, now)

    def mark(self, *parts: str) -> None:
        self._dirty.update(parts)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "acknowledge":  # in the footer only while there is one to acknowledge
            return self.board.newest_unacknowledged() is not None
        return True

    # -- actions --------------------------------------------------------------------------

    def action_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name
        pane = self.query_one(f"#{name}", TabPane)
        for widget in pane.query("DataTable"):
            widget.focus()
            break

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_acknowledge(self) -> None:
        alarm = self.board.newest_unacknowledged()
        if alarm is None:
            return
        key = (alarm["kind"], alarm["subject"])

        async def send() -> None:
            args = {"kind": key[0], "subject": key[1], "operator": self.operator or "unknown"}
            try:
                await self.ask("alarm.acknowledge", args)
            except LinkError as e:  # not recorded: it stays in the bar
                self.notify(f"NOT acknowledged: {getattr(e, 'message', e)}", severity="error")
                return
            self.board.acknowledge(key)
            self.mark("alarms")

        self.run_worker(send(), group="acknowledge", exit_on_error=False)


def run_tui(cfg: Config) -> int:
    result = AgentApp(cfg).run()
    return int(result or 0)
