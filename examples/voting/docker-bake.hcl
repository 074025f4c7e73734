# docker buildx bake --file examples/voting/docker-bake.hcl [--set *.platform=...]
# builds the voting app's three services for both platforms and pushes them to REGISTRY. On
# builders from setup-ephemeral-buildkit each platform goes to its own builder node.
variable "REGISTRY" {
  # The local cluster's registry; set REGISTRY=registry.example.com/team for yours.
  default = "10.213.0.1:5000"
}

variable "TAG" {
  default = "latest"
}

group "default" {
  targets = ["vote", "worker", "result"]
}

target "_service" {
  platforms = ["linux/amd64", "linux/arm64"]
  output    = ["type=registry"]
}

target "vote" {
  inherits = ["_service"]
  context  = "vote"
  tags     = ["${REGISTRY}/voting/vote:${TAG}"]
}

target "worker" {
  inherits = ["_service"]
  context  = "worker"
  tags     = ["${REGISTRY}/voting/worker:${TAG}"]
}

target "result" {
  inherits = ["_service"]
  context  = "result"
  tags     = ["${REGISTRY}/voting/result:${TAG}"]
}
