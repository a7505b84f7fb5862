# genlab on a CPU: the sampler app on the shipped checkpoints, as a Docker Space runs it (port 7860, user 1000).
#   docker build -t genlab . && docker run --rm -p 7860:7860 genlab                  (the Gradio sampler)
#   docker run --rm -p 8501:8501 -v $PWD/runs:/home/user/app/runs genlab \
#       streamlit run apps/monitor.py --server.address 0.0.0.0                        (the training monitor instead)
FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 1000 user
# A C compiler for the U-Net's C kernels (core/kernels.py; GENLAB_KERNELS=0 runs PyTorch's ops instead).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /home/user/app
COPY requirements.txt ./
# The CPU build of torch from PyTorch's own index (PyPI's default wheel carries CUDA, several GB).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir -r requirements.txt
COPY --chown=user . .
USER user
ENV HOME=/home/user PYTHONPATH=/home/user/app GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1
# The kernels compiled now (into ~/.cache/genlab/kernels), not in the first request; gcc is installed above, so a
# failure here is a real one and stops the build. A machine whose CPU differs from the builder's (-march=native is in
# the cache key) builds its own on first use.
RUN python -m core.kernels build
EXPOSE 7860
CMD ["python", "apps/sampler.py"]
