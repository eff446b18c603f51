"""The event log as a follower reads it: ids in order, `after`, and a wait that ends on news."""

from __future__ import annotations

import anyio

from jupyter_raykube.events import EventLog


def test_ids_count_up_and_after_returns_only_newer_events() -> None:
    log = EventLog(maxlen=3)
    for i in range(5):
        log.add(float(i), "info", f"event {i}")
    assert [e.id for e in log] == [3, 4, 5] and log.last_id == 5
    assert [e.message for e in log.after(3)] == ["event 3", "event 4"]
    assert log.after(5) == []
    # An id from a log that counted further (a server that restarted): everything it has
    assert [e.id for e in log.after(99)] == [3, 4, 5]
    assert log.add(9.0, "info", "event 4") is None and log.last_id == 5  # a repeat is not news


def test_wait_after_returns_at_the_next_event_or_empty_at_the_timeout() -> None:
    async def main() -> None:
        log = EventLog()
        log.add(0.0, "created", "made")
        assert await log.wait_after(1, 0.05) == []
        async with anyio.create_task_group() as tg:
            async def later() -> None:
                await anyio.sleep(0.2)
                log.add(1.0, "scale_up", "launched 1 cpu node")
            tg.start_soon(later)
            with anyio.fail_after(5):
                news = await log.wait_after(1, 30)
        assert [(e.id, e.kind) for e in news] == [(2, "scale_up")]

    anyio.run(main)


def test_driver_lines_can_be_turned_off_and_read_like_rays(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from jupyter_raykube import driver_events

    monkeypatch.setenv("RAY_COLOR_PREFIX", "0")
    assert driver_events.format_line({"message": "launched 1 cpu node"}) == "(raykube) launched 1 cpu node"
    monkeypatch.setenv(driver_events.ECHO_ENV, "0")
    driver_events.follow(object(), "c")  # type: ignore[arg-type]  # a client it must not use
    assert driver_events._following is None
    monkeypatch.delenv(driver_events.ECHO_ENV)
    assert driver_events.echo_enabled()
