"""Our SFT vs TRL's SFTTrainer on the same model and data: training tokens/s.

    python benchmarks/vs_trl.py [--threads 2] [--steps 30] [--batch 64] [--reps 2] [--dims 128 256]

The tiny model is exported to `LlamaForCausalLM` (with its character tokenizer); TRL trains the
exported copy with `SFTTrainer` (completion-only loss, no packing, fp32, CPU), we train the tiny
original with `train_sft`, on the same prompt/completion pairs with the same batch size, learning
rate and number of steps. Both see batches of the same size drawn from the same examples, so
tokens/s is steps/s times the mean real tokens of a batch; ours also counts its tokens exactly.
Each side runs `steps` + 1 steps and is timed from the end of its first (warm-up) step. Ours
is also timed with the tiny backend's torch ops in place of its fused training kernels
(`models/train_kernels.py`), the "torch ops" column.
Best of `reps` runs, interleaved (the machine is shared), and the spread of each rep's own
ratio. Needs `pip install trl`.

    python benchmarks/vs_trl.py --grpo [--generations 100] [--prompts 32] [--group 8] [--lr 1e-4]
                                [--dim 128] [--layers 4] [--sft-steps 1600] [--sft-lr 1e-3]
                                [--dynamic-sampling]
                                [--share-prompts] [--minibatch random|groups|spread]
                                [--seeds 0 1 2]

`--grpo`: our GRPO against TRL's `GRPOTrainer`, held-out pass@1 against process CPU time. A tiny
model (seeded) is SFT-trained briefly on 1..`level`-digit addition, so that RL has signal, and
exported (1600 steps at lr 1e-3 since 2026-12-06; the earlier 1200 at 2e-3 left seeds 0 and 2
at 0.4-2% held-out pass@1 after the training kernels changed the rounding, where RL has nothing
to work on); TRL trains the exported copy, we train the tiny original, from the same weights, each
in an on-policy loop: sample `group` completions for each of `prompts` training prompts at
temperature 1 (TRL with `transformers.generate`, we with our sampler), reward 1 when the family's
verifier accepts the parsed answer, group-normalised advantages, then `steps` = prompts x group /
`batch` AdamW steps on the clipped surrogate (clip 0.2 / 0.28, token-mean loss: TRL's `bnpo`,
our `aggregation: token`), no KL, constant lr, the optimiser's state kept across generations.
Every `eval_every` generations both are scored by the same greedy evaluator
(`loop.heldout.evaluate`) on the same held-out tasks (TRL's weights are copied back into a tiny
model); the evaluation's own CPU time is not counted. TRL runs first; ours then runs until an
evaluation reaches TRL's final pass@1 (at most `reach_cap` times the generations). The ratio
is the CPU time our run took to first reach TRL's final pass@1 over TRL's total CPU time, one
per seed (`--seeds`). One thread, fp32, CPU, for both.
`--share-prompts` runs each prompt once for its completions in a minibatch
(`algorithms/shared_prefix.py`), `--minibatch` sets how ours cuts a generation into its steps
(`strategy.rl.minibatch`; TRL's are random); both are the same loss, so the same settings.
Without dynamic sampling, groups whose rewards are all equal stay in every minibatch on both
sides, but ours never runs them through the network: with no KL term a zero-advantage
completion adds nothing to the loss or its gradient, only to the token count it is divided by
(`grpo.zero_advantage_rows`), so the steps are the same to float rounding. The share of such
completions is printed. Known differences: TRL's generation batch is drawn by its own sampler,
ours by `random`, from the same training prompts; ours takes the rollout policy's log-probs from its sampler
(`Completion.token_logprobs`, equal to a forward pass's to float rounding) where TRL runs a
forward pass for them; a completion cut at `max_new` tokens gets our stop newline appended
in our loss and not in TRL's (rare: the answers are `level` + 2 tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import cpu_name  # noqa: E402
from training import make_examples  # noqa: E402

from reasonloop.algorithms.optim import adamw  # noqa: E402
from reasonloop.algorithms.policy_gradient import Group, train_policy_gradient  # noqa: E402
from reasonloop.algorithms.sft import encode_example, train_sft  # noqa: E402
from reasonloop.config import ModelConfig, RLConfig, TasksConfig, TrainConfig  # noqa: E402
from reasonloop.loop.heldout import evaluate, make_heldout  # noqa: E402
from reasonloop.models import train_kernels  # noqa: E402
from reasonloop.models.base import Sampling  # noqa: E402
from reasonloop.models.export import load_hf_state_dict  # noqa: E402
from reasonloop.models.tiny import TinyModel  # noqa: E402
from reasonloop.models.tokenizer import EOS_ID, NEWLINE_ID, hf_tokenizer  # noqa: E402
from reasonloop.tasks.families.addition import AdditionFamily  # noqa: E402
from reasonloop.types import SFTExample, Task  # noqa: E402


def trl_steps_per_s(
    hf_dir: str, examples, steps: int, batch: int, lr: float, threads: int
) -> float:
    """Steps/s of TRL's SFTTrainer over `steps` steps (after one warm-up step)."""
    import transformers
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from trl import SFTConfig, SFTTrainer

    disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir)
    data = Dataset.from_list(
        [{"prompt": e.prompt, "completion": e.completion + "\n"} for e in examples]
    )
    times: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            max_steps=steps + 1,
            per_device_train_batch_size=batch,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=5,
            weight_decay=0.1,
            adam_beta2=0.95,
            max_grad_norm=1.0,
            use_cpu=True,
            bf16=False,
            report_to=[],
            logging_steps=10_000,
            save_strategy="no",
            completion_only_loss=True,
            packing=False,
            dataloader_num_workers=0,
            seed=0,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=data,
            processing_class=hf_tokenizer(),
            callbacks=[Clock()],
        )
        torch.set_num_threads(threads)  # the Trainer may reset it
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its metrics at the end
            trainer.train()
    return steps / (times[-1] - times[0])


def sft_tokens_per_s(model: TinyModel, examples, cfg: TrainConfig, seed: int) -> float:
    """Our `train_sft` over cfg.steps steps: tokens/s after the first step, which is timed out
    as TRL's is (`trl_steps_per_s`: its clock starts at the end of step one)."""
    clock: list[tuple[float, int]] = []
    train_sft(
        model, examples, cfg, seed=seed,
        on_step=lambda s: clock.append((time.perf_counter(), s["tokens"])),
    )  # fmt: skip
    return sum(t for _, t in clock[1:]) / (clock[-1][0] - clock[0][0])


@dataclass
class Checkpoint:
    """Held-out pass@1 after `generations` sample -> train steps, and the training cost so far
    (process CPU seconds and wall seconds, evaluation excluded)."""

    generations: int
    cpu_s: float
    wall_s: float
    pass1: float


class Clock:
    """Training time so far: process CPU time and wall time, minus the time spent evaluating."""

    def __init__(self) -> None:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()

    def checkpoint(self, generations: int, score) -> Checkpoint:
        """Stop the clock while `score()` runs; book its result at the time before it."""
        cpu, wall = time.process_time(), time.perf_counter()
        point = Checkpoint(generations, cpu - self.cpu0, wall - self.wall0, score())
        self.cpu0 += time.process_time() - cpu
        self.wall0 += time.perf_counter() - wall
        return point


@dataclass
class GrpoSetup:
    """What both frameworks share: the SFT-trained start, the prompts, the yardstick."""

    family: AdditionFamily
    base: TinyModel
    train: list[Task]
    heldout: list[Task]
    start: float
    """pass@1 of `base` on the held-out tasks."""
    train_pass1: float
    """... and on (up to 500 of) the training tasks."""


def grpo_setup(args: argparse.Namespace) -> GrpoSetup:
    """Seed a tiny model, SFT it for `sft_steps` on 1..`level`-digit sums, draw the tasks."""
    family = AdditionFamily()
    tasks_cfg = TasksConfig(heldout_levels=[args.level], heldout_per_level=args.heldout)
    heldout = make_heldout(family, tasks_cfg)
    held = {t.id for t in heldout}
    rng = random.Random(args.seed)
    train: dict[str, Task] = {}
    while len(train) < args.train_tasks:
        t = family.make(rng, args.level)
        if t.id not in held:
            train.setdefault(t.id, t)
    cfg = ModelConfig(
        dim=args.dim, n_layers=args.layers, n_heads=args.heads, max_seq_len=32, threads=1
    )
    base = TinyModel.create(cfg, seed=args.seed)
    examples = [
        SFTExample(t.prompt, family.completion(t))
        for level in range(1, args.level + 1)
        for t in (family.make(rng, level) for _ in range(args.sft_steps * 64 // args.level))
        if t.id not in held
    ]
    sft = TrainConfig(lr=args.sft_lr, steps=args.sft_steps, batch_size=64, warmup_steps=20)
    train_sft(base, examples, sft, seed=args.seed)
    tasks = list(train.values())
    start = evaluate(base, family, heldout, args.max_new)["pass@1"]
    train_pass1 = evaluate(base, family, tasks[:500], args.max_new)["pass@1"]
    return GrpoSetup(family, base, tasks, heldout, start, train_pass1)


def grpo_train_config(args: argparse.Namespace) -> tuple[TrainConfig, RLConfig]:
    """Our side of the shared hyper-parameters (TRL's are set to match in `trl_grpo`).

    With `--dynamic-sampling` ours drops the groups whose rewards are all equal (DAPO; they
    carry no advantage) and takes one pass over the rest, so a generation whose groups are all
    solved or all failed costs no training step; TRL keeps them in its loss."""
    steps = args.prompts * args.group // args.batch
    train = TrainConfig(
        lr=args.lr,
        steps=None if args.dynamic_sampling else steps,
        epochs=1.0,
        batch_size=args.batch,
        warmup_steps=0,
        min_lr_ratio=1.0,
        weight_decay=0.0,
        betas=(0.9, 0.95),
        grad_clip=1.0,
    )
    rl = RLConfig(
        scale_advantages=True,
        clip_low=0.2,
        clip_high=0.28,
        kl_beta=0.0,
        aggregation="token",
        # TRL keeps groups of equal rewards (zero advantage) in the loss; ours may drop them.
        dynamic_sampling=args.dynamic_sampling,
        share_prompts=args.share_prompts,
        minibatch=args.minibatch,
    )
    return train, rl


def ours_grpo(
    setup: GrpoSetup, args: argparse.Namespace, target: float | None = None
) -> list[Checkpoint]:
    """Our on-policy loop: sampler -> verifier rewards -> `train_policy_gradient`, per generation.

    With a `target` pass@1, generations go on past `args.generations` (up to `args.reach_cap`
    times as many) until an evaluation reaches it."""
    model = setup.base.copy()
    train, rl = grpo_train_config(args)
    opt = adamw(model.module, train)
    rng = random.Random(args.seed)
    order: list[Task] = []
    clock = Clock()
    points = [Checkpoint(0, 0.0, 0.0, setup.start)]
    last = args.generations * (args.reach_cap if target is not None else 1)
    sampled = skipped = 0
    for gen in range(1, last + 1):
        if len(order) < args.prompts:  # shuffled passes over the training prompts
            order += rng.sample(setup.train, len(setup.train))
        batch, order = order[: args.prompts], order[args.prompts :]
        sampling = Sampling(temperature=1.0, max_new_tokens=args.max_new, seed=args.seed + gen)
        comps = model.generate([t.prompt for t in batch], args.group, sampling)
        groups, behaviour = [], []
        for t, cs in zip(batch, comps, strict=True):
            texts = [c.text for c in cs]
            rewards = [setup.family.verify(t, setup.family.parse(x)[1]) for x in texts]
            groups.append(Group(t.id, t.prompt, texts, rewards))
            # The sampler's own log-probs are the rollout policy's; a completion that did not
            # stop at a newline (cut, eos) gets one appended in the loss, so it is scored again.
            behaviour.append(
                [None if c.token_logprobs is None else torch.tensor(c.token_logprobs) for c in cs]
            )
        stats = train_policy_gradient(
            model,
            groups,
            train,
            rl,
            seed=args.seed + gen,
            max_new_tokens=args.max_new,
            optimizer=opt,
            behaviour=behaviour,
        )
        sampled += args.prompts * args.group
        skipped += stats["rows_skipped"] + args.group * (stats["groups"] - stats["groups_kept"])
        if gen % args.eval_every == 0 or gen == last:
            score = lambda: evaluate(model, setup.family, setup.heldout, args.max_new)["pass@1"]  # noqa: E731
            points.append(clock.checkpoint(gen, score))
            if target is not None and gen >= args.generations and points[-1].pass1 >= target:
                break
    print(
        f"ours: {skipped / sampled:.1%} of the {sampled} sampled completions had zero advantage "
        "and never ran through the network (dropped, or skipped as adding nothing)"
    )
    return points


def trl_grpo(setup: GrpoSetup, hf_dir: str, args: argparse.Namespace) -> list[Checkpoint]:
    """TRL's GRPOTrainer on the exported copy, with the same settings as `grpo_train_config`."""
    import transformers
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from trl import GRPOConfig, GRPOTrainer

    disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir)
    # Our completions end at a newline (the tiny sampler's stop): make it an eos for TRL's
    # generation and for its completion mask, as "</s>" already is.
    model.generation_config.eos_token_id = [EOS_ID, NEWLINE_ID]
    by_id = {t.id: t for t in setup.train}
    # "<s>" is the bos token: TRL's tokenizer call adds none, and the tiny model always has one.
    data = Dataset.from_list([{"prompt": "<s>" + t.prompt, "task_id": t.id} for t in setup.train])

    def reward(completions: list[str], task_id: list[str], **_) -> list[float]:
        family = setup.family
        return [
            family.verify(by_id[i], family.parse(c)[1])
            for c, i in zip(completions, task_id, strict=True)
        ]

    steps = args.prompts * args.group // args.batch
    judge = setup.base.copy()
    points = [Checkpoint(0, 0.0, 0.0, setup.start)]
    clock: list[Clock] = []

    def score(module) -> float:
        load_hf_state_dict(judge, module.state_dict())
        return evaluate(judge, setup.family, setup.heldout, args.max_new)["pass@1"]

    class Evaluate(transformers.TrainerCallback):
        def on_train_begin(self, a, state, control, **kwargs):
            clock.append(Clock())

        def on_step_end(self, a, state, control, model=None, **kwargs):
            gen = state.global_step // steps
            if state.global_step % steps == 0 and (
                gen % args.eval_every == 0 or gen == args.generations
            ):
                points.append(clock[0].checkpoint(gen, lambda: score(model)))

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            max_steps=args.generations * steps,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            steps_per_generation=steps,
            num_generations=args.group,
            num_iterations=1,
            max_completion_length=args.max_new,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            adam_beta2=0.95,
            max_grad_norm=1.0,
            beta=0.0,
            epsilon=0.2,
            epsilon_high=0.28,
            loss_type="bnpo",
            scale_rewards="group",
            mask_truncated_completions=False,
            use_vllm=False,
            use_cpu=True,
            bf16=False,
            report_to=[],
            logging_steps=10_000,
            save_strategy="no",
            dataloader_num_workers=0,
            seed=args.seed,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=data,
            processing_class=hf_tokenizer(),
            callbacks=[Evaluate()],
        )
        torch.set_num_threads(1)  # the Trainer may reset it
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its metrics at the end
            trainer.train()
    return points


def first_reaching(points: list[Checkpoint], target: float) -> Checkpoint | None:
    """The earliest checkpoint at or above `target` pass@1 (None: never)."""
    return next((p for p in points if p.pass1 >= target), None)


def grpo_main(args: argparse.Namespace) -> None:
    """Per seed: TRL's run first, then ours until it reaches TRL's final pass@1; one line each,
    then the ratios."""
    torch.set_num_threads(1)
    print(cpu_name())
    ratios: list[float | None] = []
    for seed in args.seeds:
        args.seed = seed
        ratios.append(grpo_one(args))
    got = sorted(r for r in ratios if r is not None)
    print(
        "\nours / TRL CPU time to TRL's final pass@1, per seed: "
        + ", ".join("never" if r is None else f"{r:.3f}" for r in ratios)
        + (f"; median {statistics.median(got):.3f}" if len(got) == len(ratios) else "")
    )


def grpo_one(args: argparse.Namespace) -> float | None:
    """One seed's comparison, printed; returns the CPU-time ratio (None: ours never got there)."""
    setup = grpo_setup(args)
    steps = args.prompts * args.group // args.batch
    print(
        f"\nseed {args.seed}: GRPO on {args.level}-digit addition, tiny dim {args.dim} x "
        f"{args.layers}, SFT {args.sft_steps} steps -> pass@1 {setup.train_pass1:.2f} on training "
        f"tasks, {setup.start:.2f} on {len(setup.heldout)} held-out\n{args.generations} generations x "
        f"{args.prompts} prompts x {args.group} samples, {steps} steps of {args.batch}, lr "
        f"{args.lr}, 1 thread, fp32 CPU; CPU s = process time, evaluation excluded"
        + (
            "\nours with dynamic sampling: groups of equal rewards dropped, one pass over the rest"
            if args.dynamic_sampling
            else ""
        ),
        flush=True,
    )
    with tempfile.TemporaryDirectory() as d:
        setup.base.export_hf(d)
        theirs_run = trl_grpo(setup, d, args)
    theirs = theirs_run[-1]
    ours_run = ours_grpo(setup, args, theirs.pass1 if theirs.pass1 > setup.start else None)
    print(f"{'gen':>5}{'ours pass@1':>14}{'ours CPU s':>12}{'TRL pass@1':>14}{'TRL CPU s':>12}")
    by_gen = {p.generations: p for p in theirs_run}
    for p in ours_run:
        t = by_gen.get(p.generations)
        cells = f"{t.pass1:>14.3f}{t.cpu_s:>12.1f}" if t else f"{'':>14}{'':>12}"
        print(f"{p.generations:>5}{p.pass1:>14.3f}{p.cpu_s:>12.1f}{cells}")
    if theirs.pass1 <= setup.start:
        print(f"TRL's final pass@1 {theirs.pass1:.3f} is no better than the start: no ratio")
        return None
    at_end = next(p for p in ours_run if p.generations == args.generations)
    print(
        f"at generation {args.generations}: ours {at_end.pass1:.3f} in {at_end.cpu_s:.1f} CPU s, "
        f"TRL {theirs.pass1:.3f} in {theirs.cpu_s:.1f} CPU s (per generation "
        f"{at_end.cpu_s / theirs.cpu_s:.3f})"
    )
    reach = first_reaching(ours_run, theirs.pass1)
    if reach is None:
        print(
            f"ours never reached TRL's final pass@1 {theirs.pass1:.3f} in "
            f"{ours_run[-1].generations} generations"
        )
        return None
    print(
        f"ours reached TRL's final pass@1 {theirs.pass1:.3f} at generation {reach.generations}, "
        f"{reach.cpu_s:.1f} CPU s: {reach.cpu_s / theirs.cpu_s:.3f} of TRL's CPU time"
    )
    return reach.cpu_s / theirs.cpu_s


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument(
        "--dims", type=int, nargs="+", default=[128, 256], help="SFT: model widths (4 layers)"
    )
    grpo = ap.add_argument_group("--grpo: our GRPO vs TRL's GRPOTrainer")
    grpo.add_argument("--grpo", action="store_true", help="run this comparison instead of SFT")
    grpo.add_argument("--generations", type=int, default=100, help="sample -> train steps")
    grpo.add_argument("--prompts", type=int, default=32, help="prompts per generation")
    grpo.add_argument("--group", type=int, default=8, help="samples per prompt (group size)")
    grpo.add_argument("--lr", type=float, default=1e-4)
    grpo.add_argument("--eval-every", type=int, default=10, help="generations between evals")
    grpo.add_argument("--level", type=int, default=3, help="digits of the training sums")
    grpo.add_argument("--sft-steps", type=int, default=1600, help="SFT before RL")
    grpo.add_argument("--sft-lr", type=float, default=1e-3, help="its learning rate")
    grpo.add_argument("--max-new", type=int, default=8, help="completion tokens at most")
    grpo.add_argument("--train-tasks", type=int, default=2000)
    grpo.add_argument("--heldout", type=int, default=500, help="held-out tasks")
    grpo.add_argument("--dim", type=int, default=128)
    grpo.add_argument("--layers", type=int, default=4)
    grpo.add_argument("--heads", type=int, default=4)
    grpo.add_argument("--seeds", type=int, nargs="+", default=[0], help="one comparison each")
    grpo.add_argument(
        "--reach-cap",
        type=int,
        default=2,
        help="ours may run up to this many times --generations to reach TRL's final pass@1",
    )
    grpo.add_argument(
        "--dynamic-sampling",
        action="store_true",
        help="ours drops groups of equal rewards and trains one pass over the rest",
    )
    grpo.add_argument(
        "--share-prompts",
        action="store_true",
        help="ours runs each group's prompt once for its completions (minibatches of whole groups)",
    )
    grpo.add_argument(
        "--minibatch",
        choices=["random", "groups", "spread"],
        default="random",
        help="ours: how a generation's completions are cut into steps (strategy.rl.minibatch)",
    )
    args = ap.parse_args()
    if args.grpo:
        if (args.prompts * args.group) % args.batch:
            ap.error(
                f"--prompts x --group ({args.prompts * args.group}) must be a multiple of --batch"
            )
        warnings.simplefilter("ignore")
        grpo_main(args)
        return
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(
        f"{cpu_name()}; torch threads {args.threads}; batch {args.batch}, {args.steps} steps "
        f"(best of {args.reps})\n"
    )
    print(
        f"{'model':<24}{'ours tok/s':>12}{'torch ops':>12}{'TRL tok/s':>12}{'ours / TRL':>12}"
        f"{'torch ops / TRL':>17}{'ours / TRL, each rep (min med max)':>37}"
    )
    for dim in args.dims:
        cfg = ModelConfig(dim=dim, n_layers=4, n_heads=4)
        base = TinyModel.create(cfg, seed=0)
        examples = make_examples(args.batch * (args.steps + 1))
        tokens = [len(encode_example(base.tokenizer, e)[0]) - 1 for e in examples]
        per_batch = args.batch * sum(tokens) / len(tokens)
        tcfg = TrainConfig(steps=args.steps + 1, batch_size=args.batch, lr=1e-3, warmup_steps=5)
        ours, plain, theirs = [], [], []
        with tempfile.TemporaryDirectory() as d:
            base.export_hf(d)
            for r in range(args.reps):
                ours.append(sft_tokens_per_s(base.copy(), examples, tcfg, seed=r))
                with train_kernels.disabled():
                    plain.append(sft_tokens_per_s(base.copy(), examples, tcfg, seed=r))
                theirs.append(
                    per_batch
                    * trl_steps_per_s(d, examples, args.steps, args.batch, 1e-3, args.threads)
                )
        n = sum(p.numel() for p in base.module.parameters()) / 1e6
        name = f"dim {cfg.dim} x {cfg.n_layers} ({n:.2f}M)"
        # Each rep runs the three side by side, so its ratio shares that moment's machine.
        each = sorted(o / t for o, t in zip(ours, theirs, strict=True))
        spread = f"{each[0]:.2f} {statistics.median(each):.2f} {each[-1]:.2f}"
        print(
            f"{name:<24}{max(ours):>12.0f}{max(plain):>12.0f}{max(theirs):>12.0f}"
            f"{max(ours) / max(theirs):>11.2f}x{max(plain) / max(theirs):>16.2f}x{spread:>37}",
            flush=True,
        )


if __name__ == "__main__":
    main()
