"""The examples run as the README says and do what they claim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_order_example_resumes_after_the_crash_without_charging_twice(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "DURABLE_STORE": str(tmp_path / "store")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "order.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout
    assert done.returncode == 0, f"{output}\n{done.stderr}"
    assert "crashing after the charge was recorded" in output
    assert "state:  completed" in output
    assert output.count("charging") == 1, output


def test_saga_example_cancels_the_hotel_then_the_flight(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "saga.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    cancels = [line.strip() for line in lines if "cancelling" in line]
    assert cancels == [
        "cancelling hotel (hotel-confirmation)",
        "cancelling flight (flight-confirmation)",
    ]
    assert "state: failed" in done.stdout


def test_order_service_example_ships_after_the_payment_webhook(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "order_service.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout
    assert done.returncode == 0, f"{output}\n{done.stderr}"
    assert "POST /workflows -> 201" in output
    assert "waiting for the payment webhook" in output
    assert "POST /workflows/order-7/messages -> 202" in output
    assert '"tracking": "TRACK-order-7"' in output
    assert "serving HTTP on http://127.0.0.1:" in done.stderr
