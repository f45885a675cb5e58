"""transformers engine: the fallback where vLLM is missing, and the reference for tests."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from rlaif.engines import base
from rlaif.engines.base import Chat, Completion, OnDone, OptionScores, Sampling


class HFEngine(base.LocalModelEngine):
    name = "hf"

    def __init__(self, model_path: str, settings):
        import torch
        from transformers import AutoTokenizer

        from rlaif.engines import USES, resolved_dtype

        self.model_id = model_path
        self.settings = settings
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_path, trust_remote_code=settings.trust_remote_code
        )
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        on_gpu = self.device == "cuda"
        self.models = base.ModelsByUse(
            self._load, {use: resolved_dtype(settings.dtype, use, on_gpu) for use in USES}
        )

    def _load(self, dtype_name: str):
        import torch
        from transformers import AutoModelForCausalLM

        if dtype_name == "auto":  # a GPU: bf16 where it has it
            dtype_name = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        model = AutoModelForCausalLM.from_pretrained(
            self.model_id,
            dtype=getattr(torch, dtype_name),
            trust_remote_code=self.settings.trust_remote_code,
        ).to(self.device)
        model.eval()
        return model, dtype_name

    def _batches(self, prompts: list[list[int]]):
        """Indices grouped into batches of similar length, so little compute goes to padding."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        size = self.settings.batch_size
        for start in range(0, len(order), size):
            yield order[start : start + size]

    def _left_padded(self, prompts: list[list[int]]):
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def generate(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        seeds: Sequence[int],
        on_done: OnDone | None = None,
    ) -> list[Completion]:
        import torch

        prompts = [base.render_prompt_ids(self.tokenizer, chat) for chat in chats]
        base.check_fits(prompts, sampling.max_new_tokens, self.settings.max_model_len)
        results: list[Completion | None] = [None] * len(prompts)
        model = self.models("generate")
        eos_ids = self._eos_ids(model)
        for batch in self._batches(prompts):
            ids, mask = self._left_padded([prompts[i] for i in batch])
            # transformers samples a whole batch from one generator, so per-request seeds cannot
            # be honoured exactly; seeding from the batch's seeds keeps reruns identical.
            torch.manual_seed(_combine_seeds(seeds[i] for i in batch))
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=sampling.max_new_tokens,
                    do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature if sampling.temperature > 0 else None,
                    top_p=sampling.top_p if sampling.temperature > 0 else None,
                    top_k=None,
                    pad_token_id=self.pad_id,
                )
            for row, i in enumerate(batch):
                new = out[row, ids.shape[1] :].tolist()
                n_tokens = next((k + 1 for k, t in enumerate(new) if t in eos_ids), len(new))
                text = self.tokenizer.decode(new[:n_tokens], skip_special_tokens=True)
                results[i] = Completion(text.strip(), len(prompts[i]), n_tokens)
            if on_done:
                on_done(len(batch))
        return results  # type: ignore[return-value]

    def score_options(
        self,
        chats: Sequence[Chat],
        options: Sequence[str],
        answer_prefix: str | Sequence[str] = "",
        on_done: OnDone | None = None,
    ) -> list[OptionScores]:
        import torch

        prefixes = base.per_chat(answer_prefix, len(chats))
        prompts = [
            base.render_prompt_ids(self.tokenizer, c, p)
            for c, p in zip(chats, prefixes, strict=True)
        ]
        base.check_fits(prompts, 1, self.settings.max_model_len)
        variants = [base.option_token_ids(self.tokenizer, o) for o in options]
        results: list[OptionScores | None] = [None] * len(prompts)
        model = self.models("score")
        for batch in self._batches(prompts):
            ids, mask = self._left_padded([prompts[i] for i in batch])
            with torch.no_grad():
                # Left padding puts every prompt's last token in the last column: one forward
                # pass, logits of that position only.
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits
            logprobs = torch.log_softmax(logits[:, -1, :].float(), dim=-1).cpu()
            for row, i in enumerate(batch):
                scores = [
                    base.logsumexp([logprobs[row, t].item() for t in ids_]) for ids_ in variants
                ]
                results[i] = OptionScores(scores, len(prompts[i]))
            if on_done:
                on_done(len(batch))
        return results  # type: ignore[return-value]

    def _eos_ids(self, model) -> set[int]:
        eos = model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def close(self) -> None:
        self.models.close()


def _combine_seeds(seeds) -> int:
    digest = hashlib.sha256(",".join(str(s) for s in seeds).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
