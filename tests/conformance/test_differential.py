"""The emulated control program answers exactly as NVIDIA's 535 and 550 programs do.

Each script runs against NVIDIA's ``nvidia-cuda-mps-control`` of each version (fetched from
Debian, see conftest.py) and against ``gpuslice-emulated-mps-control``, in the same directories; what a user
sees must be identical: every exit status, stdout and stderr, the pipe directory's files while
the daemon runs and after it quits, and control.log (times and PIDs taken out). The scripts
cover every command that needs no GPU, with the inputs of issue 10's table first.
"""

from __future__ import annotations

import os
import signal

import pytest

from gpuslice.mps.control import EMULATED_PROGRAM, _which

from .transcript import Call, Script, Transcript, run_script

UUID = "GPU-f1164376-cdca-5af5-8c30-751d35ce99e8"
UID = os.getuid()
#: PIDs no process can have (Linux's PID_MAX_LIMIT is 2**22): commands about an unknown PID
#: never name a live process, or a PID the log normaliser has named (5678 was once the emulated
#: daemon's own PID, with pid_max 32768).
NO_PID, NO_PID_2 = 2**22 + 1, 2**22 + 2


PERCENTAGES = ("37.5", "0.5", "33.333", "1e1", "50abc", "0x10", "30 40", "100.04", "nan", "inf")
PERCENTAGES += ("0.01", "99.96", "")
PINNED_VALUES = ("10GiB", "10", "1.5G", "4096MB", "4g", "4m", "1G2", "0M", "abc", "-5M", "2K")
PINNED_VALUES += ("+3G", "1048576M", "99999999999G")


def ui(*lines: str, settle: str | None = None) -> Call:
    """One front-end run with ``lines`` on stdin, each ended by a newline."""
    return Call(stdin="".join(f"{line}\n" for line in lines), settle=settle)


SCRIPTS = [
    # Issue 10's table, row by row.
    Script(
        "set default percentage prints the result", (ui("set_default_active_thread_percentage 30"),)
    ),
    Script(
        "invalid percentages keep the value, exit 0",
        (
            ui("set_default_active_thread_percentage 30"),
            ui("set_default_active_thread_percentage 130"),
            ui("set_default_active_thread_percentage 0"),
            ui("set_default_active_thread_percentage -1"),
            ui("set_default_active_thread_percentage abc"),
            ui("get_default_active_thread_percentage"),
        ),
    ),
    Script(
        "pinned limits show in whole G, truncated",
        tuple(
            ui(
                f"set_default_device_pinned_mem_limit 0 {value}",
                "get_default_device_pinned_mem_limit 0",
            )
            for value in ("8192M", "3000M", "1536M", "1024M", "1023M", "700M", "2G")
        ),
    ),
    Script(
        "a UUID is no ordinal",
        (
            ui(
                "set_default_device_pinned_mem_limit 0 3G",
                "set_default_device_pinned_mem_limit 1 3G",
            ),
            ui(f"set_default_device_pinned_mem_limit {UUID} 4G"),
            ui("get_default_device_pinned_mem_limit 0", "get_default_device_pinned_mem_limit 1"),
            ui(f"get_default_device_pinned_mem_limit {UUID}"),
        ),
    ),
    Script("client list of an unknown server", (ui(f"get_client_list {NO_PID}"),)),
    Script("unknown command", (ui("x"), ui("GET_SERVER_LIST"), ui("help"))),
    Script("ps without servers", (ui("ps"), ui(f"ps -p {NO_PID}"), ui("ps -x"))),
    Script(
        "client priority",
        (
            ui("get_default_client_priority"),
            ui("set_default_client_priority 1", "get_default_client_priority"),
            ui("set_default_client_priority 2", "get_default_client_priority"),
            ui("set_default_client_priority -1"),
            ui("set_default_client_priority x", "get_default_client_priority"),
            ui("set_default_client_priority 1abc", "get_default_client_priority"),
        ),
    ),
    Script(
        "several commands on one stdin, an unknown one among them",
        (ui("get_default_active_thread_percentage", "x", "get_default_client_priority"),),
    ),
    Script("the pipe directory's files", (ui("get_server_list"),)),
    Script(
        "quit after a server that failed to start",
        (
            ui(f"start_server -uid {UID}", settle="exited with status"),
            ui("get_server_list"),
            ui("quit"),
        ),
        daemon_env=(("CUDA_VISIBLE_DEVICES", ""),),
    ),
    Script("no daemon", (ui("get_server_list"), ui("quit"), Call()), start=False),
    Script("second -d on the same pipe directory", (Call(args=("-d",)), Call(args=("-f",)))),
    # More, found by exploring NVIDIA's program.
    Script("empty stdin and empty lines", (Call(), ui(""), ui("", ""))),
    Script(
        "whitespace around and between words",
        (
            Call(stdin="  get_server_list  \n\tget_default_active_thread_percentage\n"),
            Call(stdin="get_default_client_priority\r\nget_client_list\t77\r\n"),
        ),
    ),
    Script("last line without a newline", (Call(stdin="get_default_client_priority"),)),
    Script("quit with a timeout", (ui("quit -t 5"),)),
    Script("quit with arguments it does not know", (ui("quit abc"),)),
    Script(
        "percentages read as C's strtod reads them",
        (ui(*(f"set_default_active_thread_percentage {p}" for p in PERCENTAGES)),),
    ),
    Script(
        "pinned values read as NVIDIA's daemon reads them",
        (
            ui(
                *(
                    line
                    for value in PINNED_VALUES
                    for line in (
                        f"set_default_device_pinned_mem_limit 0 {value}",
                        "get_default_device_pinned_mem_limit 0",
                    )
                )
            ),
        ),
    ),
    Script(
        "device ordinals 0-31, as C ints",
        (
            ui(
                "set_default_device_pinned_mem_limit 31 4G",
                "get_default_device_pinned_mem_limit 31",
            ),
            ui(
                "set_default_device_pinned_mem_limit 32 4G",
                "get_default_device_pinned_mem_limit 32",
            ),
            ui(
                "set_default_device_pinned_mem_limit -1 4G",
                "get_default_device_pinned_mem_limit -1",
            ),
            ui(
                "set_default_device_pinned_mem_limit 4294967296 2G",
                "get_default_device_pinned_mem_limit 0",
            ),
            ui(
                "set_default_device_pinned_mem_limit 2147483648 1G",
                "get_default_device_pinned_mem_limit 0",
            ),
            ui(
                "set_default_device_pinned_mem_limit 1abc 5G",
                "get_default_device_pinned_mem_limit 1",
            ),
            ui("set_default_device_pinned_mem_limit 0", "get_default_device_pinned_mem_limit 0"),
            ui("get_default_device_pinned_mem_limit", "get_default_device_pinned_mem_limit 0 1"),
        ),
    ),
    Script(
        "server commands with unknown PIDs",
        (
            ui(
                f"shutdown_server {NO_PID}",
                "shutdown_server abc",
                f"shutdown_server {NO_PID} -f",
                "shutdown_server",
            ),
            ui(f"terminate_client {NO_PID} {NO_PID_2}", "terminate_client"),
            ui(
                f"set_active_thread_percentage {NO_PID} 50",
                f"get_active_thread_percentage {NO_PID}",
            ),
            ui(
                f"set_device_pinned_mem_limit {NO_PID} 0 1G",
                f"get_device_pinned_mem_limit {NO_PID} 0",
            ),
            ui(
                "get_device_client_list",
                f"get_device_client_list {NO_PID}",
                "get_device_client_list abc",
            ),
            ui("get_client_list", "get_client_list abc", f"get_client_list {NO_PID} 5"),
            ui("get_client_list -5", "get_client_list 4294967296", "get_client_list 99999999999"),
        ),
    ),
    Script(
        "start_server needs -uid and a number",
        (ui("start_server", "start_server -uid", "start_server -uid abc", "start_server 1000"),),
    ),
    Script(
        "the daemon's environment sets its defaults",
        (
            ui(
                "get_default_active_thread_percentage",
                "get_default_device_pinned_mem_limit 0",
                "get_default_client_priority",
            ),
        ),
        daemon_env=(
            ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "40"),
            ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=2G"),
            ("CUDA_MPS_CLIENT_PRIORITY", "1"),
        ),
    ),
    Script(
        "invalid defaults in the daemon's environment are logged and ignored",
        (ui("get_default_active_thread_percentage", "get_default_client_priority"),),
        daemon_env=(
            ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "150"),
            ("CUDA_MPS_CLIENT_PRIORITY", "5"),
        ),
    ),
    Script(
        "no pipe directory",
        (Call(args=("-d",)), ui("get_server_list")),
        start=False,
        pipe_dir=False,
    ),
    Script(
        "options it does not know run the front end",
        (Call(stdin="get_default_client_priority\n", args=("-x",)),),
    ),
    Script(
        "SIGTERM ends the daemon at once, leaving its files",
        (ui("set_default_active_thread_percentage 30"), Call(kill=signal.SIGTERM), ui("ps")),
    ),
]


@pytest.fixture(scope="module")
def emulated_control() -> list[str]:
    found = _which(EMULATED_PROGRAM)
    assert found is not None, f"{EMULATED_PROGRAM} is not installed"
    return [found]


def _explain(real: Transcript, emulated: Transcript) -> str:
    lines = []
    for name in ("results", "pipe_running", "pipe_after", "log_ordered", "log_async"):
        a, b = getattr(real, name), getattr(emulated, name)
        if a != b:
            lines.append(f"{name}:\n  NVIDIA:   {a!r}\n  emulated: {b!r}")
    return "\n".join(lines)


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_emulated_control_program_answers_as_nvidias(
    script: Script, nvidia_control: str, emulated_control: list[str], short_root: str
) -> None:
    real = run_script([nvidia_control], script, short_root)
    emulated = run_script(emulated_control, script, short_root)

    if script.name == "quit after a server that failed to start":
        # NVIDIA's front end returns the daemon's status 1 only some of the time (a race in
        # it; 4 of 10 runs here): the daemon logs "Exit with status 1" every time, and the
        # emulated program exits with what the daemon says.
        assert real.results[-1].returncode in (0, 1)
        assert emulated.results[-1].returncode == 1
        assert "Control: Exit with status 1" in real.log_ordered
        real.results[-1] = emulated.results[-1]
    assert real == emulated, _explain(real, emulated)


def test_the_scripts_cover_more_than_twenty_commands_and_inputs() -> None:
    lines = {
        line
        for script in SCRIPTS
        for call in script.calls
        for line in [*call.stdin.splitlines(), " ".join(call.args)]
        if line
    }
    assert len(lines) >= 20, sorted(lines)
