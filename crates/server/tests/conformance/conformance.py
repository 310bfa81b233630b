"""Drive a running seedbed with the official Python SDKs and the brief's examples.

Usage: conformance.py BASE_URL API_KEY MODEL [FLUX_MODEL [DIT_MODEL@SIZE ...]]

With FLUX_MODEL, the SDKs also drive a FLUX.1 model through the same calls. Each
DIT_MODEL@SIZE (a Z-Image or SD3.5 model and a size it takes) gets two more requests: an Ark
generation with guidance and a negative prompt, and an OpenAI image edit. The edit form has no
`steps` field, so it runs the model's default steps times its low `strength`: give a Turbo
(few-step) model to keep it quick.

Each check prints one line; the last line is "N passed, N failed"; the exit status is 0
only when every check passed.
"""

import base64
import io
import json
import subprocess
import sys
import traceback

import requests

BASE, KEY, MODEL = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
FLUX = sys.argv[4] if len(sys.argv) > 4 else None
DIT = [arg.rsplit("@", 1) for arg in sys.argv[5:]]
RESULTS = []


def check(name):
    def wrap(fn):
        try:
            fn()
            RESULTS.append((name, None))
            print(f"ok   {name}", flush=True)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            RESULTS.append((name, traceback.format_exc()))
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        return fn

    return wrap


def fetch_jpeg(url):
    response = requests.get(url, timeout=60)
    assert response.status_code == 200, response.status_code
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content[:2] == b"\xff\xd8"
    assert b"trainedAlgorithmicMedia" in response.content
    return response.content


def ark_clients():
    from byteplussdkarkruntime import Ark as BytePlusArk
    from volcenginesdkarkruntime import Ark as VolcArk

    from byteplussdkarkruntime.types.images.images import (
        SequentialImageGenerationOptions as BytePlusOptions,
    )
    from volcenginesdkarkruntime.types.images.images import (
        SequentialImageGenerationOptions as VolcOptions,
    )

    return [
        ("volcengine-ark-runtime", VolcArk(base_url=f"{BASE}/api/v3", api_key=KEY), VolcOptions),
        ("byteplus-python-sdk-v2", BytePlusArk(base_url=f"{BASE}/api/v3", api_key=KEY), BytePlusOptions),
    ]


for sdk, client, Options in ark_clients():

    @check(f"{sdk}: images.generate returns a url, size and usage")
    def _(client=client):
        response = client.images.generate(
            model=MODEL, prompt="a lighthouse at dusk", size="2K", watermark=False, seed=7
        )
        assert response.model == MODEL, response.model
        assert len(response.data) == 1
        assert response.data[0].size == "128x128", response.data[0].size
        assert response.usage.generated_images == 1
        assert response.usage.output_tokens == 64
        fetch_jpeg(response.data[0].url)

    @check(f"{sdk}: b64_json")
    def _(client=client):
        response = client.images.generate(model=MODEL, prompt="a fox", response_format="b64_json")
        raw = base64.b64decode(response.data[0].b64_json)
        assert raw[:2] == b"\xff\xd8"

    @check(f"{sdk}: a streamed batch yields one event per image, then usage")
    def _(client=client, Options=Options):
        stream = client.images.generate(
            model=MODEL,
            prompt="a comic strip",
            sequential_image_generation="auto",
            sequential_image_generation_options=Options(max_images=2),
            stream=True,
        )
        kinds, indexes, usage = [], [], None
        for event in stream:
            kinds.append(event.type)
            if event.type == "image_generation.partial_succeeded":
                indexes.append(event.image_index)
                fetch_jpeg(event.url)
            if event.type == "image_generation.completed":
                usage = event.usage
        assert kinds == [
            "image_generation.partial_succeeded",
            "image_generation.partial_succeeded",
            "image_generation.completed",
        ], kinds
        assert indexes == [0, 1], indexes
        # The SDKs build every stream event as an image event, so usage may stay a dict.
        generated = usage["generated_images"] if isinstance(usage, dict) else usage.generated_images
        assert generated == 2, usage

    @check(f"{sdk}: a bad size raises BadRequest with the code and param")
    def _(client=client):
        try:
            client.images.generate(model=MODEL, prompt="x", size="1x1")
        except Exception as error:  # noqa: BLE001 - the SDK's own error class
            assert getattr(error, "status_code", None) == 400, repr(error)
            assert error.code == "InvalidParameter", error.code
            assert error.param == "size", error.param
            assert error.request_id, "no request id"
        else:
            raise AssertionError("no error raised")


@check("volcengine-ark-runtime: a wrong key raises AuthenticationError")
def _():
    from volcenginesdkarkruntime import Ark

    client = Ark(base_url=f"{BASE}/api/v3", api_key="wrong", max_retries=0)
    try:
        client.images.generate(model=MODEL, prompt="x")
    except Exception as error:  # noqa: BLE001
        assert getattr(error, "status_code", None) == 401, repr(error)
        assert error.code == "AuthenticationError"
    else:
        raise AssertionError("no error raised")


@check("openai: images.generate with extra_body, n=2")
def _():
    from openai import OpenAI

    client = OpenAI(base_url=f"{BASE}/v1", api_key=KEY)
    response = client.images.generate(
        model=MODEL, prompt="a cat", n=2, size="2K", extra_body={"watermark": False}
    )
    assert len(response.data) == 2
    fetch_jpeg(response.data[0].url)


def grey_png():
    """A 32x32 grey PNG written by hand so the checks need no imaging library."""
    import struct
    import zlib

    raw = b"".join(b"\x00" + b"\x80\x80\x80" * 32 for _ in range(32))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = io.BytesIO()
    png.write(b"\x89PNG\r\n\x1a\n")
    png.write(chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)))
    png.write(chunk(b"IDAT", zlib.compress(raw)))
    png.write(chunk(b"IEND", b""))
    png.seek(0)
    return png


@check("openai: images.edit uploads a reference image")
def _():
    from openai import OpenAI

    client = OpenAI(base_url=f"{BASE}/v1", api_key=KEY)
    response = client.images.edit(
        model=MODEL, image=("in.png", grey_png(), "image/png"), prompt="make it red",
        response_format="b64_json",
    )
    assert base64.b64decode(response.data[0].b64_json)[:2] == b"\xff\xd8"


@check("brief: Python requests example, streaming")
def _():
    url = f"{BASE}/byteplus/v3/images/generations"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    payload = {
        "model": MODEL,
        "prompt": "Vehicle display stand, showcasing a Bugatti Chiron sports car.",
        "size": "2K",
        "stream": True,
        "watermark": False,
    }
    response = requests.post(url, headers=headers, json=payload, timeout=120)
    lines = [line.decode("utf-8") for line in response.iter_lines() if line]
    assert lines[0] == "event: image_generation.partial_succeeded", lines
    event = json.loads(lines[1][len("data: "):])
    assert event["size"] == "128x128" and event["image_index"] == 0
    assert lines[2] == "event: image_generation.completed", lines
    assert lines[-1] == "data: [DONE]", lines


@check("brief: curl example")
def _():
    body = json.dumps(
        {
            "model": MODEL,
            "prompt": "Vehicle display stand, showcasing a Bugatti Chiron sports car.",
            "size": "2K",
            "stream": True,
            "watermark": False,
        }
    )
    out = subprocess.run(
        [
            "curl", "-sS", "--fail", "--location", "--request", "POST",
            f"{BASE}/byteplus/v3/images/generations",
            "--header", "Content-Type: application/json",
            "--header", f"Authorization: Bearer {KEY}",
            "--data-raw", body,
        ],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "event: image_generation.partial_succeeded" in out, out
    assert out.rstrip().endswith("data: [DONE]"), out


@check("openapi.json is a valid OpenAPI 3.1 document covering the Seedream path")
def _():
    from openapi_spec_validator import validate

    document = requests.get(f"{BASE}/openapi.json", timeout=30).json()
    validate(document)
    assert document["openapi"].startswith("3.1"), document["openapi"]
    operation = document["paths"]["/api/v3/images/generations"]["post"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]


if FLUX:
    for sdk, client, _options in ark_clients():

        @check(f"{sdk}: a FLUX model through the same call, at its own 1K scale")
        def _(client=client):
            response = client.images.generate(
                model=FLUX, prompt="a lighthouse at dusk", size="512x512", seed=3,
                response_format="b64_json",
            )
            assert response.model == FLUX, response.model
            assert response.data[0].size == "512x512", response.data[0].size
            assert base64.b64decode(response.data[0].b64_json)[:2] == b"\xff\xd8"

    @check("openai: FLUX with true CFG and a negative prompt via extra_body")
    def _():
        from openai import OpenAI

        client = OpenAI(base_url=f"{BASE}/v1", api_key=KEY)
        response = client.images.generate(
            model=FLUX, prompt="a cat", size="512x512", response_format="b64_json",
            extra_body={"negative_prompt": "fog", "true_cfg_scale": 2.0, "steps": 2},
        )
        assert base64.b64decode(response.data[0].b64_json)[:2] == b"\xff\xd8"


for dit, dit_size in DIT:

    @check(f"volcengine-ark-runtime: {dit} with guidance_scale and a negative prompt")
    def _(dit=dit, dit_size=dit_size):
        from volcenginesdkarkruntime import Ark

        client = Ark(base_url=f"{BASE}/api/v3", api_key=KEY)
        response = client.images.generate(
            model=dit, prompt="a lighthouse at dusk", size=dit_size, seed=3, guidance_scale=2.0,
            response_format="b64_json", extra_body={"negative_prompt": "fog", "steps": 2},
        )
        assert response.model == dit, response.model
        assert response.data[0].size == dit_size, response.data[0].size
        assert base64.b64decode(response.data[0].b64_json)[:2] == b"\xff\xd8"

    @check(f"openai: {dit} images.edit")
    def _(dit=dit, dit_size=dit_size):
        from openai import OpenAI

        client = OpenAI(base_url=f"{BASE}/v1", api_key=KEY)
        response = client.images.edit(
            model=dit, image=("in.png", grey_png(), "image/png"), prompt="make it red",
            size=dit_size, response_format="b64_json", extra_body={"strength": 0.3},
        )
        assert response.data[0].size == dit_size, response.data[0].size
        assert base64.b64decode(response.data[0].b64_json)[:2] == b"\xff\xd8"


failed = sum(1 for _, error in RESULTS if error)
print(f"{len(RESULTS) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
