"""The quantization summary as the console shows it: what was quantized and how, and the search."""

from __future__ import annotations

from qcal.search.steps import SearchStep, final_agreement, layers_kept


def quantize_text(summary: dict) -> str:
    tail = summary["decode_tail"]
    op_types = ", ".join(f"{k} x{v}" for k, v in tail["op_types"].items()) or "-"
    tail_line = (f"  decode tail: {tail['nodes']} nodes kept {tail['kept']} ({op_types}) after "
                 f"{len(tail['head_nodes'])} head convolutions")
    if not tail["nodes"]:
        tail_line = (f"  decode tail: none: the model's output {summary.get('output_shape')} is not a YOLO-style "
                     "detection output, so no part of it is kept out of the quantization")
    lines = [
        f"qcal quantization summary ({summary['calibration_images']} calibration images, method {summary['method']})",
        f"  activations: {summary['activations']}",
        f"  weights:     {summary['weights']}; bias {summary['bias']}",
        tail_line,
        f"  QDQ: {summary['quantize_pairs']} QuantizeLinear, {summary['dequantize_nodes']} DequantizeLinear; "
        f"encodings for {summary['activation_encodings']} activations and {summary['param_encodings']} parameters",
        f"  size: {summary['float_model_bytes'] / 1e6:.1f} MB float -> "
        f"{summary['quantized_model_bytes'] / 1e6:.1f} MB quantized",
    ]
    nonfinite = summary.get("nonfinite_activations") or {}
    if nonfinite:
        worst = sorted(nonfinite.items(), key=lambda item: -item[1])[:3]
        lines.append(f"  warning: {len(nonfinite)} activations held NaN or infinite values on the calibration images "
                     f"({', '.join(f'{name}: {count:,}' for name, count in worst)}); their ranges ignore them, but the "
                     "float model itself misbehaves on these inputs")
    target = summary.get("target")
    if target:
        lines.append(f"  target {target['runtime']}: " + "; ".join(target["reasons"]))
    if summary["excluded_nodes"] or summary["excluded_op_types"]:
        lines.append(f"  excluded by config: nodes {summary['excluded_nodes']}, "
                     f"op types {summary['excluded_op_types']}")
    return "\n".join(lines) + "\n"


def steps_text(steps: list[SearchStep], max_drop: float) -> str:
    lines = [f"  accuracy search (budget: mAP50 agreement drop <= {max_drop}; agreements on the search's own "
             "images):"]
    for i, step in enumerate(steps):
        lines.append(f"    step {i}: {step.describe()}: {step.agreement_text()}")
    agreement = final_agreement(steps)
    met = 1 - agreement <= max_drop
    if len(steps) == 1:
        lines.append("    budget met with every layer in int8")
    else:
        kept = f"{layers_kept(steps)} layers kept in {steps[1].precision}"
        lines.append(f"    budget {'met' if met else 'NOT met'} with {kept}: agreement {agreement:.3f} in-sample")
    return "\n".join(lines) + "\n"
