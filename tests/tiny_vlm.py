"""A tiny Qwen2-VL (the real architecture, random weights) saved as a folder that ``transformers serve`` loads:
a byte-level BPE tokenizer trained here on a few sentences with Qwen2-VL's special tokens and a Qwen-style chat
template, Qwen2-VL's image processor, and a 1-layer model.

``answer``: when given, the language model is made to answer exactly that text whatever the image: each layer's
attention and MLP outputs are zeroed (so the last position's hidden state is the last token's embedding) and
the embeddings and output head chain the last prompt token to the answer's tokens and then ``<|im_end|>``.  The
vision tower keeps its random weights and still runs on every image.  Run as a script:
``python tests/tiny_vlm.py OUT_DIR ['{"score": 7}']``."""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c or 'image_url' in c %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CORPUS = ['Does this figure show "a red cube on a table"? Please answer yes or no.',
          'How well does this image show "a cat"? Rate it from 1 (not at all) to 10 (perfectly).',
          '{"score": 7} {"answer": "yes"} {"answer": "no"} Yes yes No no'] * 3


def build(out: str, answer: Optional[str] = None, seed: int = 0) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor)

    os.makedirs(out, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=SPECIAL[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    try:
        from transformers import Qwen2VLVideoProcessor
        processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    except ImportError:  # pragma: no cover - older transformers
        processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=CHAT_TEMPLATE)
    hidden = 64
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}, tie_word_embeddings=False,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    if answer is not None:
        _chain(model, tokenizer, processor, answer, ids["<|im_end|>"], hidden)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    processor.save_pretrained(out)
    with open(os.path.join(out, "tiny_vlm.json"), "w") as f:
        json.dump({"answer": answer, "seed": seed}, f)
    return out


def _chain(model, tokenizer, processor, answer: str, eos: int, hidden: int) -> None:
    import torch
    prompt_ids = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                                               add_generation_prompt=True, tokenize=True)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    if prompt_ids and isinstance(prompt_ids[0], list):
        prompt_ids = prompt_ids[0]
    chain = [int(prompt_ids[-1])] + tokenizer.encode(answer, add_special_tokens=False) + [eos]
    nxt = {}
    for a, b in zip(chain, chain[1:]):
        if nxt.get(a, b) != b:
            raise ValueError(f"the answer {answer!r} repeats a token with two successors; pick another answer")
        nxt[a] = b
    if len(nxt) > hidden:
        raise ValueError("the answer is too long for the tiny model's hidden size")
    lm = model.model.language_model if hasattr(model.model, "language_model") else model.model
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = lm.embed_tokens.weight
        head = model.lm_head.weight
        head.normal_(0, 0.01)
        for slot, (a, b) in enumerate(nxt.items()):
            emb[a] = 0.0
            emb[a, slot] = 1.0
            head[b, :] = 0.0
        for slot, (a, b) in enumerate(nxt.items()):
            head[b, slot] = 10.0
        lm.norm.weight.fill_(1.0)


if __name__ == "__main__":
    print(build(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
