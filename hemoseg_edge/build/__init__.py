"""Build-time tools, apart from the runtime path: ``quantize`` (FP32 ONNX -> FP16 / INT8 Q/DQ
ONNX) and ``trt_engine`` (ONNX -> hemoseg TensorRT engine file, on the target GPU). They read
models through ``model_file``; the runtime imports them only to build a TensorRT engine that
is not cached yet."""
