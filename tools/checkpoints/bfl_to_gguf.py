# A single-file FLUX transformer in BFL's layout (flux_to_bfl.py, or a downloaded flux1-*.safetensors) written as
# GGUF with the ggml project's own Python package (`pip install gguf`), the way city96's ComfyUI-GGUF converter writes
# the community's files: BFL names, vectors and tiny tensors f32, the embedders and the final layer f16, a matrix whose
# rows do not split into the type's blocks f16, every other matrix in the requested type. It is the independent
# writer the engine's GGUF reader is checked against (fixtures/single-file/tiny-flux-dev-q8_0.gguf); gguf-py
# quantizes the legacy types only (K-quants come from llama.cpp's quantize tool).
# usage: bfl_to_gguf.py IN.safetensors OUT.gguf {f16,q8_0,q4_0,q4_1,q5_0,q5_1}
import argparse, sys
import numpy as np
import gguf
from safetensors.numpy import load_file
sys.dont_write_bytecode = True

KEPT = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")


def storage_type(name, shape, qtype):
    T = gguf.GGMLQuantizationType
    if len(shape) < 2 or int(np.prod(shape)) <= 1024:
        return T.F32
    bare = name.removeprefix("model.diffusion_model.")
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if qtype == T.F16 or bare.startswith(KEPT) or shape[-1] % block != 0:
        return T.F16
    return qtype


def main():
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("type", choices=["f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
    a = p.parse_args()
    qtype = gguf.GGMLQuantizationType[a.type.upper()]
    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, data in sorted(load_file(a.src).items()):
        data = data.astype(np.float32)
        to = storage_type(name, data.shape, qtype)
        stored = gguf.quants.quantize(data, to)
        # Quantized data comes as bytes per row; the logical shape is the tensor's.
        writer.add_tensor(name, stored, raw_shape=stored.shape, raw_dtype=to)
    writer.write_header_to_file(path=a.out)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
