module github.com/org/setup-ephemeral-buildkit/hack/tools/dockercli

go 1.26.8

require github.com/docker/cli v29.10.0+incompatible
