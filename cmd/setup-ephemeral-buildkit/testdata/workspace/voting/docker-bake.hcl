# Three services, each for both platforms, pushed to REGISTRY: the shape of
# examples/voting/docker-bake.hcl, with one small Dockerfile for all three.
variable "REGISTRY" {}
variable "TAG" {}

group "default" {
  targets = ["vote", "worker", "result"]
}

target "_service" {
  dockerfile = "../Dockerfile"
  platforms  = ["linux/amd64", "linux/arm64"]
  output     = ["type=registry"]
}

target "vote" {
  inherits = ["_service"]
  context  = "vote"
  tags     = ["${REGISTRY}/e2e/vote:${TAG}"]
}

target "worker" {
  inherits = ["_service"]
  context  = "worker"
  tags     = ["${REGISTRY}/e2e/worker:${TAG}"]
}

target "result" {
  inherits = ["_service"]
  context  = "result"
  tags     = ["${REGISTRY}/e2e/result:${TAG}"]
}
