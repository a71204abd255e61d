"""Board catalog: the facts (memory maps, UARTs, emulators) and `routevit boards`."""
import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from toolchain.boards import all_boards, board_ids, get_board
from toolchain.cli.boards import command as boards_command
from toolchain.errors import RoutevitError

KB, MB = 1024, 1024 * 1024


def test_catalog_lists_the_seven_boards():
    assert board_ids() == ["mps2-an386", "mps2-an500", "mps3-an547", "nrf52840-dk",
                           "stm32f4-discovery", "stm32f746g-disco", "stm32h743"]


@pytest.mark.parametrize("board_id, core, flash, ram, uart_base, machine", [
    ("mps2-an386", "cortex-m4", (0x0, 4 * MB), (0x20000000, 4 * MB), 0x40004000, "mps2-an386"),
    ("mps2-an500", "cortex-m7", (0x0, 4 * MB), (0x20000000, 4 * MB), 0x40004000, "mps2-an500"),
    ("mps3-an547", "cortex-m55", (0x0, 512 * KB), (0x20000000, 512 * KB), 0x49303000, "mps3-an547"),
    ("stm32f4-discovery", "cortex-m4", (0x08000000, 1 * MB), (0x20000000, 128 * KB), 0x40011000, "netduinoplus2"),
    ("stm32f746g-disco", "cortex-m7", (0x08000000, 1 * MB), (0x20000000, 320 * KB), 0x40011000, None),
    ("nrf52840-dk", "cortex-m4", (0x0, 1 * MB), (0x20000000, 256 * KB), 0x40002000, None),
    ("stm32h743", "cortex-m7", (0x08000000, 2 * MB), (0x20000000, 128 * KB), 0x40004800, None),
])
def test_board_facts(board_id, core, flash, ram, uart_base, machine):
    board = get_board(board_id)
    assert board.core == core
    assert (board.region("flash").origin, board.flash_bytes) == flash
    assert (board.region("ram").origin, board.ram_bytes) == ram
    assert board.uart["base"] == uart_base
    assert board.qemu_machine == machine
    assert f"-mcpu={core}" in board.cpu_flags and "-mthumb" in board.cpu_flags
    assert board.fpu and "-mfloat-abi=hard" in board.cpu_flags


def test_an547_places_model_and_arena_in_its_large_srams():
    board = get_board("mps3-an547")
    assert (board.region("sram").origin, board.region("sram").size) == (0x01000000, 2 * MB)
    assert (board.region("sram2").origin, board.region("sram2").size) == (0x21000000, 4 * MB)
    assert board.placement == {"model": "sram", "arena": "sram2"}


def test_every_board_has_a_renode_platform_and_consistent_placement():
    for board in all_boards():
        names = {r.name for r in board.regions}
        assert {"flash", "ram"} <= names
        assert set(board.placement.values()) <= names
        assert board.renode and board.renode["platform"]
        if board.renode["platform"] == "generated":
            assert board.renode["uart_model"].startswith("UART.") and board.renode["uart_irqs"]
        # regions never overlap
        spans = sorted((r.origin, r.origin + r.size) for r in board.regions)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_unknown_board_is_a_user_error():
    with pytest.raises(RoutevitError, match="not in the catalog"):
        get_board("arduino-uno")


def test_boards_cli_json_is_one_object_with_limits():
    result = CliRunner().invoke(boards_command, ["--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    by_id = {b["id"]: b for b in data["boards"]}
    assert by_id["stm32f4-discovery"]["memory"]["ram"]["size"] == 128 * KB
    assert by_id["mps2-an386"]["qemu"]["machine"] == "mps2-an386"


def test_boards_cli_table_names_every_board():
    result = CliRunner().invoke(boards_command, [])
    assert result.exit_code == 0
    for board_id in board_ids():
        assert board_id in result.stdout
    assert "128 KB" in result.stdout and "netduinoplus2" in result.stdout


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed")
def test_qemu_knows_every_catalog_machine():
    machines = subprocess.run(["qemu-system-arm", "-M", "help"], capture_output=True, text=True, check=True).stdout
    for board in all_boards():
        if board.qemu_machine:
            assert board.qemu_machine in machines.split()


def test_h743_puts_the_arena_in_its_512_kb_axi_sram():
    """The H743's 1 MB of SRAM is six blocks (the 64 KB ITCM unused); the arena goes to the
    largest (AXI SRAM), data, buffers and stack to the DTCM."""
    board = get_board("stm32h743")
    assert (board.region("axisram").origin, board.region("axisram").size) == (0x24000000, 512 * KB)
    assert board.placement == {"model": "flash", "arena": "axisram"}
    assert sum(r.size for r in board.regions if r.name != "flash") == 992 * KB  # + the 64 KB ITCM
    assert board.uart["gpio_base"] == 0x58020000 and board.uart["rcc_uart_enable"] == {"offset": "0xE8", "bit": 18}
