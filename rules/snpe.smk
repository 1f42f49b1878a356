# Optional SNPE backend: Qualcomm's converter and quantizer, fed with qcal's encodings and input list.


rule snpe_dlc:
    input:
        model="results/model/prepared.onnx",
        encodings="results/encodings.json",
        input_list="results/input_list.txt",
    output:
        dlc="results/model_quantized.dlc",
        float_dlc="results/model/float.dlc",
    log:
        "results/logs/snpe_dlc.log",
    params:
        activation_bits=16 if S.target.activations == "int16" else 8,
        per_channel=config["quantization"]["per_channel"],
        native_uint8=S.profile.dtype == "uint8",
    resources:
        mem_mb=4000,
        runtime=60,
    run:
        jobs.snpe_dlc(input, output, params, log)
