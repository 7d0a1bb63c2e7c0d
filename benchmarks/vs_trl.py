"""Our SFT vs TRL's SFTTrainer on the same model and data: training tokens/s.

    python benchmarks/vs_trl.py [--threads 2] [--steps 30] [--batch 64] [--reps 2]

The tiny model is exported to `LlamaForCausalLM` (with its character tokenizer); TRL trains the
exported copy with `SFTTrainer` (completion-only loss, no packing, fp32, CPU), we train the tiny
original with `train_sft`, on the same prompt/completion pairs with the same batch size, learning
rate and number of steps. Both see batches of the same size drawn from the same examples, so
tokens/s is steps/s times the mean real tokens of a batch; ours also counts its tokens exactly.
Best of `reps` runs, interleaved (the machine is shared). Needs `pip install trl`.

Not yet here: TRL's GRPOTrainer against our GRPO round (issue 3).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import make_examples  # noqa: E402

from reasonloop.algorithms.sft import encode_example, train_sft  # noqa: E402
from reasonloop.config import ModelConfig, TrainConfig  # noqa: E402
from reasonloop.models.tiny import TinyModel  # noqa: E402
from reasonloop.models.tokenizer import hf_tokenizer  # noqa: E402


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
        trainer.train()
    return steps / (times[-1] - times[0])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(
        f"torch threads {args.threads}; batch {args.batch}, {args.steps} steps (best of {args.reps})\n"
    )
    print(f"{'model':<24}{'ours tok/s':>12}{'TRL tok/s':>12}{'ours / TRL':>12}")
    for cfg in (ModelConfig(), ModelConfig(dim=256, n_layers=4, n_heads=4)):
        base = TinyModel.create(cfg, seed=0)
        examples = make_examples(args.batch * (args.steps + 1))
        tokens = [len(encode_example(base.tokenizer, e)[0]) - 1 for e in examples]
        per_batch = args.batch * sum(tokens) / len(tokens)
        tcfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=1e-3, warmup_steps=5)
        ours, theirs = 0.0, 0.0
        with tempfile.TemporaryDirectory() as d:
            base.export_hf(d)
            for r in range(args.reps):
                ours = max(ours, train_sft(base.copy(), examples, tcfg, seed=r)["tokens_per_s"])
                theirs = max(
                    theirs,
                    per_batch
                    * trl_steps_per_s(d, examples, args.steps, args.batch, 1e-3, args.threads),
                )
        n = sum(p.numel() for p in base.module.parameters()) / 1e6
        name = f"dim {cfg.dim} x {cfg.n_layers} ({n:.2f}M)"
        print(f"{name:<24}{ours:>12.0f}{theirs:>12.0f}{ours / theirs:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
