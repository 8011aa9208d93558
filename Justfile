# Thin wrappers over the qpsnn CLI and pytest. `just --list` shows them.

model := "model.qpsnn"

# train the default digits model, export model.qpsnn, evaluate it
demo:
    qpsnn demo --out {{model}}

# the whole test suite (what CI runs: two workers, each test file on one of them)
test *ARGS:
    python3 -m pytest -q -n 2 --dist loadfile {{ARGS}}

# the 10,000-case semantic fuzz of the model-file validator (CI runs 1,000)
fuzz-modelfile cases="10000":
    python3 -m qpsnn.sw.fuzz_modelfile --cases {{cases}} --seed 0

# evaluate a model file with the integer golden model
eval file=model:
    qpsnn eval {{file}}

# the MNIST-5k benchmark run of the README's results table (T=4), the T=2 model the ULX3S serial build keeps,
# and the c16-c16 T=2 one (80+40 epochs) of the kept kernel-parallel build (mnist5k-kp)
bench-mnist5k:
    qpsnn train --dataset mnist5k --bits 4 --prune 0.5 --augment --out runs/mnist5k/model.qpsnn
    OMP_NUM_THREADS=1 qpsnn train --dataset mnist5k --bits 4 --prune 0.5 --augment --timesteps 2 --out runs/mnist5k-t2/model.qpsnn
    OMP_NUM_THREADS=1 qpsnn train --dataset mnist5k --spec c32-p2-c32-p2-fc10 --bits 4 --prune 0.5 --augment --timesteps 2 --epochs 80 --finetune-epochs 40 --out runs/mnist5k-c16/model.qpsnn

# Fashion-MNIST 4-bit 50 % pruned (10+5 epochs: 89.59 % integer, about an hour on one core), then 20 images on the RTL
bench-fashion device="auto":
    OMP_NUM_THREADS=1 qpsnn train --dataset fashion-mnist --bits 4 --prune 0.5 --epochs 10 --finetune-epochs 5 --device {{device}} --out runs/fashion/model.qpsnn --json
    qpsnn sim runs/fashion/model.qpsnn --samples 20 --jobs 2

# c16-p2-c32-p2-fc10 at T=2, 4 QAT + 2 fine-tune epochs; the two seeds train in two CPU processes
# the Fashion-MNIST ablation of the README (2/4 bit, prune 0.5/0.75, 5 methods, 2 seeds; ~50 min on 2 cores; GPU: just ablate-fashion cuda 1)
ablate-fashion device="cpu" jobs="2":
    qpsnn ablate --dataset fashion-mnist --spec c16-p2-c32-p2-fc10 --timesteps 2 --bits 2,4 --prune 0.5,0.75 --seeds 2 --epochs 4 --finetune-epochs 2 --device {{device}} --jobs {{jobs}} --out runs/ablate-fashion

# the digits ablation of the README (2/4 bit, prune 0.5/0.75, 3 seeds)
ablate:
    qpsnn ablate --dataset digits --bits 2,4 --prune 0.5,0.75 --seeds 3 --out runs/ablate

# the RTL against the golden model on every test image (Verilator), JSON report
sim file=model simulator="verilator":
    qpsnn sim {{file}} --simulator {{simulator}}

# RTL cycles against events at three spike densities (plot in runs/density)
bench-density file=model:
    qpsnn bench-density {{file}} --out runs/density

# serve the RTL (with its UART host link) on a TCP port for the driver; link=mmio for the register window
serve-sim file=model link="uart" port="7777":
    qpsnn serve-sim {{file}} --link {{link}} --port {{port}}

# load the model through a served simulation (or a board: device=/dev/ttyUSB1) and classify 20 test images
infer file=model device="socket://127.0.0.1:7777":
    qpsnn infer {{file}} --device {{device}} --samples 20

# the host link's error replies, a cut frame, and 10,000 fuzz frames (CI runs 1,000)
bench-link file=model:
    qpsnn bench-link {{file}} --frames 10000

# the kept bitstreams, rebuilt from the models kept beside them (v2: see the README's throughput table), then the manifest
bitstreams:
    qpsnn build bitstreams/icebreaker/digits/model.qpsnn --board icebreaker --lanes 2 --clock 16 --out bitstreams/icebreaker/digits
    qpsnn build bitstreams/icebreaker/digits-c8/model.qpsnn --board icebreaker --lanes 1 --clock 16 --out bitstreams/icebreaker/digits-c8
    qpsnn build bitstreams/icebreaker/digits-fast/model.qpsnn --board icebreaker --lanes 2 --clock 16 --out bitstreams/icebreaker/digits-fast
    qpsnn build bitstreams/icebreaker/mnist5k/model.qpsnn --board icebreaker --lanes 2 --offsets 1 --unrolled --clock 16 --out bitstreams/icebreaker/mnist5k
    qpsnn build bitstreams/ulx3s-85f/digits/model.qpsnn --board ulx3s-85f --lanes 16 --offsets 1 --clock 35 --out bitstreams/ulx3s-85f/digits
    qpsnn build bitstreams/ulx3s-85f/mnist5k/model.qpsnn --board ulx3s-85f --lanes 16 --offsets 1 --clock 30 --out bitstreams/ulx3s-85f/mnist5k
    qpsnn build bitstreams/ulx3s-85f/mnist5k-kp/model.qpsnn --board ulx3s-85f --lanes 16 --offsets 9 --clock 21.875 --out bitstreams/ulx3s-85f/mnist5k-kp
    qpsnn build --write-manifest

# verify bitstreams/manifest.json against the files
check-bitstreams:
    qpsnn build --check

# rebuild every kept bitstream with the command in its report.json and compare the sha256 with the manifest
reproduce-bitstreams:
    qpsnn build --reproduce

# co-design on the iCEBreaker: the demo digits network and six more x P x offsets, synthesized; runs/sweep/icebreaker
# (c24-t2 is the kept bitstreams/icebreaker/digits model: c16-c24 after pruning, 98.89 %)
sweep-digits:
    mkdir -p runs/sweep/digits
    test -f runs/sweep/digits/p75-t4.qpsnn || qpsnn train --dataset digits --bits 4 --prune 0.75 --timesteps 4 --out runs/sweep/digits/p75-t4.qpsnn
    test -f runs/sweep/digits/p75-t2.qpsnn || qpsnn train --dataset digits --bits 4 --prune 0.75 --timesteps 2 --out runs/sweep/digits/p75-t2.qpsnn
    test -f runs/sweep/digits/p50-t2.qpsnn || qpsnn train --dataset digits --bits 4 --prune 0.5 --timesteps 2 --out runs/sweep/digits/p50-t2.qpsnn
    test -f runs/sweep/digits/p875-t4.qpsnn || qpsnn train --dataset digits --bits 4 --prune 0.875 --timesteps 4 --out runs/sweep/digits/p875-t4.qpsnn
    test -f runs/sweep/digits/p75-t2-e80.qpsnn || qpsnn train --dataset digits --bits 4 --prune 0.75 --timesteps 2 --epochs 80 --finetune-epochs 40 --out runs/sweep/digits/p75-t2-e80.qpsnn
    test -f runs/sweep/digits/c24-t2.qpsnn || OMP_NUM_THREADS=1 qpsnn train --dataset digits --spec c32-p2-c48-p2-fc10 --bits 4 --prune 0.5 --timesteps 2 --out runs/sweep/digits/c24-t2.qpsnn
    qpsnn sweep bitstreams/ulx3s-85f/digits/model.qpsnn runs/sweep/digits/p75-t4.qpsnn runs/sweep/digits/p75-t2.qpsnn runs/sweep/digits/p50-t2.qpsnn runs/sweep/digits/p875-t4.qpsnn runs/sweep/digits/p75-t2-e80.qpsnn runs/sweep/digits/c24-t2.qpsnn --board icebreaker --lanes 1,2,4 --offsets 1,9 --clock 16 --synth --out runs/sweep/icebreaker

# MNIST on the iCEBreaker: the c8-c16 T=2 network (98.0 %, seed 2, ~3-8 min; it is the kept bitstreams/icebreaker/mnist5k
# model) and the kept c16-c16 one, event-driven and with layer 1 unrolled, P=2 and 4, synthesized (README, "Co-design
# sweep"); then c8-c16 unrolled on the RTL, 200 images
sweep-icebreaker-mnist:
    test -f runs/c8c16-s2/model.qpsnn || qpsnn train --dataset mnist5k --spec c16-p2-c32-p2-fc10 --bits 4 --prune 0.5 --timesteps 2 --epochs 80 --finetune-epochs 40 --augment --seed 2 --out runs/c8c16-s2/model.qpsnn
    qpsnn sweep runs/c8c16-s2/model.qpsnn bitstreams/ulx3s-85f/mnist5k-kp/model.qpsnn --board icebreaker --lanes 2,4 --offsets 1 --unrolled --clock 16 --synth --out runs/sweep/icebreaker-mnist
    qpsnn sim runs/c8c16-s2/model.qpsnn --samples 200 --lanes 2 --offsets 1 --unrolled

# co-design on the ULX3S, MNIST-5k: the two kept models (c16-c32 and c16-c16, T=2) and c16-c32 at T=4 over P and offsets (memory plan; add --synth for logic)
sweep-mnist5k:
    mkdir -p runs/sweep/mnist5k
    test -f runs/sweep/mnist5k/t4.qpsnn || qpsnn train --dataset mnist5k --bits 4 --prune 0.5 --augment --out runs/sweep/mnist5k/t4.qpsnn
    qpsnn sweep bitstreams/ulx3s-85f/mnist5k/model.qpsnn bitstreams/ulx3s-85f/mnist5k-kp/model.qpsnn runs/sweep/mnist5k/t4.qpsnn --board ulx3s-85f --lanes 4,8,16,32 --offsets 1,9 --clock 30 --out runs/sweep/ulx3s-85f
