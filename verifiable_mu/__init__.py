"""verifiable-mu: the shared core both prover and verifier trust (placeholder)."""
