"""Generates crates/engine/src/text/clip/tokenizer/reference_ids.rs: the token ids that the reference
tokenizer (transformers' CLIPTokenizer, as diffusers loads it) produces for a batch of tricky
prompts, so that seedbed's own CLIP BPE tokenizer can be tested against them without Python.

Tokenizer folders used:
  fixture      fixtures/clip-tokenizer as it is (loaded from tokenizer.json)
  vocab_merges the same vocabulary as vocab.json + merges.txt + tokenizer_config.json only
  sd15         vocab + merges with an SD 1.5-style tokenizer_config.json (AddedToken dicts with
               normalized=true, pad as a plain string)
  sdxl_2       vocab + merges with an SDXL/SD2 text_encoder_2-style config: pad token "!" given in
               special_tokens_map.json, which makes "!" a special token matched in the raw text
  decoder      vocab + merges with an added_tokens_decoder section in tokenizer_config.json

Run: .venv-ref/bin/python tools/reference/clip_tokenizer_ids.py [path/to/fixtures]
"""

import json
import os
import shutil
import sys
import tempfile

from transformers import CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "fixtures")
OUT = os.path.join(REPO, "crates", "engine", "src", "text", "clip", "tokenizer", "reference_ids.rs")
CLIP = os.path.join(FIXTURES, "clip-tokenizer")

SD15_CONFIG = {
    "add_prefix_space": False,
    "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": False,
                  "normalized": True, "rstrip": False, "single_word": False},
    "do_lower_case": True,
    "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False,
                  "normalized": True, "rstrip": False, "single_word": False},
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "<|endoftext|>",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False,
                  "normalized": True, "rstrip": False, "single_word": False},
}
SDXL_2_CONFIG = dict(SD15_CONFIG)
SDXL_2_SPECIAL_TOKENS_MAP = {
    "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False},
    "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False},
    "pad_token": "!",
    "unk_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False},
}
DECODER_CONFIG = {
    "added_tokens_decoder": {
        "0": {"content": "!", "lstrip": False, "normalized": False, "rstrip": False,
              "single_word": False, "special": True},
        "49406": {"content": "<|startoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False, "special": True},
        "49407": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                  "rstrip": False, "single_word": False, "special": True},
    },
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "model_max_length": 77,
    "pad_token": "!",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": "<|endoftext|>",
}

# (name, files to copy from the fixture folder, extra json files written into it)
FOLDERS = [
    ("fixture", None, {}),
    ("vocab_merges", ["vocab.json", "merges.txt", "tokenizer_config.json"], {}),
    ("sd15", ["vocab.json", "merges.txt"], {"tokenizer_config.json": SD15_CONFIG}),
    ("sdxl_2", ["vocab.json", "merges.txt"],
     {"tokenizer_config.json": SDXL_2_CONFIG, "special_tokens_map.json": SDXL_2_SPECIAL_TOKENS_MAP}),
    ("decoder", ["vocab.json", "merges.txt"], {"tokenizer_config.json": DECODER_CONFIG}),
]

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "",
    "   ",
    "Hello, World!",
    "HELLO WoRlD",
    "don't stop, we're here; it's fine. I'm sure you'll see they'd've",
    "THEY'RE DON'T 'quoted' ''s",
    "numbers 1234567890 and 3.14159, 1e-5, 50% x² ½",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m",
    "cafe\u0301 A\u030angstro\u0308m",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 \u0928\u092e\u0938\u094d\u0924\u0947 \u0645\u0631\u062d\u0628\u0627",
    "emoji \U0001f680\U0001f525 \U0001f44d\U0001f3fd and \U0001f468\u200d\U0001f469\u200d\U0001f467!",
    "multiple    spaces\tand\nnewlines\r\n end",
    "  leading and trailing  ",
    "punctuation!!! ??? ... --- (parens) [brackets] {braces} \"quotes\" ~`@#$^&*_+=|\\/<>",
    "masterpiece, best quality, (ultra detailed:1.2), 8k, highres, <lora:foo:0.8>",
    "<|startoftext|>x <|endoftext|> y",
    "hello<|endoftext|>world",
    "<|STARTOFTEXT|> upper <|ENDOFTEXT|>",
    "< |endoftext| > <|endoftext",
    "\u039f\u0394\u039f\u03a3 \u03a3 \u0130stanbul STRA\u00dfE \ufb01 \u01c5 \u1e9e",
    "a\u00a0b\u3000c\u2009d\u200be\u0085f\u001cg\u180eh\u000bi\u2028j",
    "\uff11\uff12\uff13 \uff21\uff22\uff23 \u2460 \u2167",
    "under_score snake_case camelCase kebab-case",
    "url https://example.com/path?q=1&b=2#frag email@example.org",
    "control\u0000char\u0007bell \ufffd replacement",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "x" * 300,
    "wow!! great! !hello! !!!",
    "Vehicle display stand, showcasing a Bugatti Chiron sports car.",
    "a photo of a cat " * 20,
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three "
    "twenty-four twenty-five twenty-six twenty-seven twenty-eight twenty-nine thirty!",
]

# Prompts whose padded/truncated 77 ids are written out in full as well.
PADDED = ["", "Hello, World!", "a photo of a cat " * 20, "wow!! great! !hello! !!!"]


def rust_str(s):
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif 0x20 <= ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.append("\\u{%x}" % ord(ch))
    return '"' + "".join(out) + '"'


def make_folder(root, name, copies, extra):
    if copies is None:
        return CLIP
    path = os.path.join(root, name)
    os.makedirs(path)
    for f in copies:
        shutil.copy(os.path.join(CLIP, f), path)
    for f, content in extra.items():
        with open(os.path.join(path, f), "w") as fh:
            json.dump(content, fh)
    return path


def main():
    lines = [
        "// @generated by tools/reference/clip_tokenizer_ids.py from transformers' CLIPTokenizer.",
        "// Do not edit by hand: rerun the script.",
        "",
        "/// Extra files of a tokenizer folder: (folder, file name, JSON content). The folders copy",
        "/// vocab.json + merges.txt from the fixture clip-tokenizer and add these files.",
        "pub const FOLDER_FILES: &[(&str, &str, &str)] = &[",
    ]
    for name, copies, extra in FOLDERS:
        if copies is not None and "tokenizer_config.json" in copies:
            with open(os.path.join(CLIP, "tokenizer_config.json")) as fh:
                content = json.dumps(json.load(fh))
            lines.append(f"    ({rust_str(name)}, \"tokenizer_config.json\", {rust_str(content)}),")
        for f, content in extra.items():
            lines.append(f"    ({rust_str(name)}, {rust_str(f)}, {rust_str(json.dumps(content))}),")
    lines.append("];")
    lines.append("")

    unpadded, padded = [], []
    with tempfile.TemporaryDirectory() as root:
        for name, copies, extra in FOLDERS:
            tok = CLIPTokenizer.from_pretrained(make_folder(root, name, copies, extra))
            for prompt in PROMPTS:
                ids = tok(prompt).input_ids
                unpadded.append((name, prompt, ids))
                full = tok(prompt, padding="max_length", max_length=tok.model_max_length,
                           truncation=True).input_ids
                # The padded form must follow from the unpadded one by the documented rule;
                # this keeps the generated file small while still checking it.
                n = tok.model_max_length
                expect = ids[: n - 1] + [ids[-1]] if len(ids) > n else ids
                expect = expect + [tok.pad_token_id] * (n - len(expect))
                assert full == expect, (name, prompt)
                if prompt in PADDED:
                    padded.append((name, prompt, full))

    lines.append("/// (folder, prompt, ids with bos/eos, not truncated or padded).")
    lines.append("pub const UNPADDED: &[(&str, &str, &[u32])] = &[")
    for name, prompt, ids in unpadded:
        lines.append(f"    ({rust_str(name)}, {rust_str(prompt)}, &{ids}),")
    lines.append("];")
    lines.append("")
    lines.append("/// (folder, prompt, ids truncated/padded to model_max_length).")
    lines.append("pub const PADDED: &[(&str, &str, &[u32])] = &[")
    for name, prompt, ids in padded:
        lines.append(f"    ({rust_str(name)}, {rust_str(prompt)}, &{ids}),")
    lines.append("];")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {OUT}: {len(unpadded)} unpadded, {len(padded)} padded")


if __name__ == "__main__":
    main()
