// Never built: .ci/supply-chain only reads its Cargo.lock.
