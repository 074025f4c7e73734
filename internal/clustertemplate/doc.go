// Package clustertemplate is the platform team's cluster template: one versioned YAML document,
// kept in one ConfigMap of the runner namespace, that sets the builders' defaults and limits for
// every job there. Parse reads it strictly (unknown keys, duplicate keys and bad values are
// refused with their line and field path); Apply turns a template and a job's inputs into the
// provisioner's effective options, or refuses an input past the template's limits, naming the
// input, the value, the template and the limit; Policy writes the same limits into the admission
// policy, so that the API server refuses what the client would. Get (get.go) is the only part
// that talks to the API server.
//
// The schema, version setup-ephemeral-buildkit.io/v1alpha1 (deploy/cluster-template.yaml is a
// commented example):
//
//	apiVersion: setup-ephemeral-buildkit.io/v1alpha1
//	kind: ClusterTemplate
//	image: docker.io/moby/buildkit:v0.34.2     # the builders' image (default: the product's for the mode)
//	imagePullPolicy: IfNotPresent              # Always, IfNotPresent, Never
//	allowedImages: [registry.example/buildkit:*]  # more images jobs may choose, if jobInputs has image
//	mode: rootful                              # rootful or rootless
//	debug: false                               # buildkitd --debug
//	openTelemetry: {endpoint: http://collector:4317, protocol: grpc}
//	buildkitdFlags: [--oci-worker-gc-keepstorage=20000]
//	buildkitdConfig: |                         # buildkitd.toml (no files: ca and keypair are the job's)
//	  ...
//	resources:
//	  default: {requests: {cpu: "1", memory: 2Gi}, limits: {memory: 4Gi}}
//	  maximum: {cpu: "4", memory: 16Gi}        # per builder; a limit a job leaves unset is the maximum
//	maxLifetime: {default: 2h, maximum: 6h}
//	terminationGracePeriod: {default: 15m, maximum: 1h}
//	platforms:                                 # "*" for every platform, or os/arch[/variant]
//	  linux/arm64:
//	    nodeSelector: {node.example.com/pool: arm64}
//	    tolerations: [{key: arch, value: arm64, effect: NoSchedule}]
//	    affinity: {...}                        # Kubernetes' own types, as in a pod spec
//	    priorityClassName: ci-builds
//	    topologySpreadConstraints: [...]
//	cache:                                     # cache volumes (cache: volume)
//	  mode: "off"                              # the cache input's default: off or volume
//	  storageClass: standard-rwo               # the volumes' StorageClass; empty: the cluster's default
//	  size: {default: 20Gi, maximum: 100Gi}    # cache-size; the maximum is the policy's maxCacheSize
//	  maxSlots: 4                              # cache-max-slots' default and maximum
//	jobInputs: [requests, limits]              # the governed inputs jobs may set (GovernedInputs);
//	                                           # absent: all of them; platforms, labels, timeout, ... stay the job's
//
// The schema is versioned so that a later version can change a field's meaning; this version is
// refused by a program that does not know it, never half-read.
package clustertemplate
