# tarsmq: `make help` lists the targets.

BIN     := bin/tarsmq
PKG     := github.com/tarsmq/tarsmq
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE    ?= $(shell git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w \
	-X $(PKG)/internal/buildinfo.Version=$(VERSION) \
	-X $(PKG)/internal/buildinfo.Commit=$(COMMIT) \
	-X $(PKG)/internal/buildinfo.Date=$(DATE)
GOFLAGS_BUILD := -trimpath -ldflags "$(LDFLAGS)"
ARCHES  := arm64 amd64
# The Debian version: a tag v1.2.0 gives 1.2.0, "+" keeps 1.2.0-3-gabc above
# it, and an untagged tree is 0.0.0~git<commit>.
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -E 's/^v([0-9])/\1/; t; s/^/0.0.0~git/' | tr - +)
NFPM    := go tool -modfile=tools/go.mod nfpm

.PHONY: help build test bench bench-compare lint cross deb check-unit run clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build bin/tarsmq for this machine (static, version stamped)
	CGO_ENABLED=0 go build $(GOFLAGS_BUILD) -o $(BIN) ./cmd/tarsmq

test: ## run every test with the race detector
	go test -race -count=1 -timeout 15m ./...

bench: ## run the benchmarks (the cmd/tarsmq ones run the real binary for minutes)
	go test -run XXX -bench . -benchmem -timeout 30m ./...

bench-compare: ## tarsmq against Mosquitto, side by side: writes docs/benchmarks.md (about 10 minutes)
	bench/compare.sh

lint: ## gofmt, go vet, staticcheck, and go mod tidy must be clean
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	go tool staticcheck ./...
	go mod tidy -diff
	cd tools && go mod tidy -diff

cross: ## static binaries for linux/arm64 and linux/amd64 in dist/
	@for arch in $(ARCHES); do \
		echo "dist/tarsmq-linux-$$arch"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build $(GOFLAGS_BUILD) -o dist/tarsmq-linux-$$arch ./cmd/tarsmq || exit 1; \
	done

deb: cross ## .deb packages for arm64 and amd64 in dist/ (binary, unit, config, user)
	@rm -f dist/tarsmq_*.deb
	@for arch in $(ARCHES); do \
		ARCH=$$arch DEB_VERSION=$(DEB_VERSION) $(NFPM) package --config packaging/nfpm.yaml \
			--packager deb --target dist/tarsmq_$(DEB_VERSION)_$$arch.deb || exit 1; \
	done

check-unit: build ## systemd-analyze verify and security score of the unit
	scripts/check-unit.sh

run: build ## build, then run the broker on its built-in defaults
	exec $(BIN) serve

clean: ## remove build output
	rm -rf bin dist
