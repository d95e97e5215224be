"""Entry points for test harnesses (ONNX backend tests, conformance, peer benchmark) and
small example models built in code, so that nothing is downloaded."""
