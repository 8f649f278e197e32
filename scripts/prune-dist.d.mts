/** Types of prune-dist.mjs (plain JavaScript: build.mjs runs before anything is compiled). */
export declare function staleOutputs(dist: string, root: string): string[]
export declare function pruneStaleOutputs(dist: string, root: string): string[]
