"""Small, checked rewrites of ONNX graphs around quantization (see ``quantize_onnx``).

Why: in the INT8 frame-input graph the quantizer puts ``Cast(uint8 -> float) ->
QuantizeLinear(scale 1, zero point 0)`` on the frame: an identity on uint8 pixels that
onnxruntime 1.32 still runs as two passes over the frame. It is removed here, so the frame
goes straight into the first integer convolution. ``known_ranges`` gives the quantizer the
ranges that are known exactly (pixels 0..255, probabilities 0..1) instead of calibrated
approximations, which is what makes that identity exact.

Tried and left out: onnxruntime runs bilinear Resize between a DequantizeLinear and a
QuantizeLinear in float (it drops Q/DQ only around *nearest* Resize). Rewriting it to a
uint8 Resize was measured *slower* at 720x1280 (its integer bilinear kernel: 142 vs 118 ms
per frame, one thread), so the float Resize stays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PIXEL_OPS = ("Concat", "Transpose", "Reshape", "Slice", "Pad")  # ops that only move pixel values


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def known_ranges(path: str | Path) -> dict[str, list[dict]]:
    """TensorQuantOverrides for a frame-input graph: pixel tensors 0..255, Sigmoid outputs 0..1."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consumers = _consumers(graph)
    uint8_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    ranges: dict[str, list[dict]] = {}
    todo = [n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] in uint8_inputs]
    while todo:
        name = todo.pop()
        if name in ranges:
            continue
        ranges[name] = [{"rmin": np.float32(0.0), "rmax": np.float32(255.0)}]
        todo += [c.output[0] for c in consumers.get(name, []) if c.op_type in PIXEL_OPS]
    for n in graph.node:
        if n.op_type == "Sigmoid":
            ranges[n.output[0]] = [{"rmin": np.float32(0.0), "rmax": np.float32(1.0)}]
    return ranges


def _scalar(inits: dict, name: str):
    a = inits.get(name)
    return None if a is None or a.size != 1 else a.reshape(()).item()


def simplify_quantized(path: str | Path, check_tolerance: float = 0.01) -> list[str]:
    """Remove the frame's Cast+QuantizeLinear identity in place; returns what was done.

    The rewritten model must give the same probabilities as before on a smooth random frame
    (mean absolute difference within ``check_tolerance``); otherwise the file is unchanged.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    uint8_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    remove: list = []
    rename: dict[str, str] = {}
    done: list[str] = []
    for q in graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        cast = producers.get(q.input[0])
        zp = inits.get(q.input[2]) if len(q.input) > 2 else None
        if (cast is not None and cast.op_type == "Cast" and cast.input[0] in uint8_inputs
                and _scalar(inits, q.input[1]) == 1.0 and zp is not None and zp.dtype == np.uint8
                and int(zp.reshape(-1)[0]) == 0 and len(consumers.get(cast.output[0], [])) == 1):
            rename[q.output[0]] = cast.input[0]
            remove += [cast, q]
            done.append(f"frame Cast+QuantizeLinear removed ({q.name})")
    if not done:
        return []
    kept = [n for n in graph.node if all(n is not x for x in remove)]
    for n in kept:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.value_info[:]  # types changed (float -> uint8); onnxruntime re-infers them
    tmp = path.with_name(path.name + ".simplified.onnx")
    onnx.save(model, str(tmp))
    try:
        diff = _mean_output_diff(path, tmp)
        if diff > check_tolerance:
            return [f"not rewritten: outputs differed by {diff:.4f} on average"]
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return done


def _mean_output_diff(a: Path, b: Path) -> float:
    import onnxruntime as ort

    outs = []
    rng = np.random.default_rng(0)
    feed = None
    for p in (a, b):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        if feed is None:
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            # a smooth random "photo": noise blurred by repetition, so features are not all saturated
            base = rng.integers(0, 256, size=[max(1, s // 8) if k in (1, 2) else s for k, s in enumerate(shape)])
            feed = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :shape[1], :shape[2]].astype(np.uint8)
            if feed.shape != tuple(shape):
                feed = rng.integers(0, 256, size=shape).astype(np.uint8)
        outs.append(sess.run(None, {inp.name: feed})[0].astype(np.float32))
    return float(np.abs(outs[0] - outs[1]).mean())
