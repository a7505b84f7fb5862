# genlab on a CPU: the shipped checkpoints, the dataset and the package, ready to run.
#   docker build -t genlab . && docker run --rm genlab                 (evaluates the shipped classifiers)
#   docker run --rm genlab python -m pytest                            (the test suite; the browser tests skip)
#   docker run --rm -p 8501:8501 -v $PWD/runs:/app/runs genlab streamlit run apps/monitor.py --server.address 0.0.0.0
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt requirements-dev.txt ./
# The CPU build of torch from PyTorch's own index (PyPI's default wheel carries CUDA, several GB).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir -r requirements-dev.txt
COPY . .
RUN pip install --no-cache-dir --no-deps -e .
CMD ["python", "-m", "core.evaluate", "checkpoints/classifier-adv", "--limit", "2000"]
