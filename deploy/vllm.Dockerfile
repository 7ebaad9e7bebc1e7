# syntax=docker/dockerfile:1
# The generation server: the official vLLM image, OpenAI-compatible API, LoRA adapters
# loaded at run time by the workers (POST /v1/load_lora_adapter). The compose file passes
# the model and the LoRA flags as the command.
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}

ENV VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    HF_HUB_OFFLINE=1

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
