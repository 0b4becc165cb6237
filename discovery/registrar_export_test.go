package discovery

// AgentTimeout is how long a registrar waits for one call to the local
// agent, for the external tests' bounds.
const AgentTimeout = agentTimeout
