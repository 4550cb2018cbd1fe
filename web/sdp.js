// Session description edits: the few Opus parameters we set ourselves.

/**
 * `sdp` with every Opus format's fmtp carrying `parameters` (e.g. {usedtx: 1}),
 * replacing those names and keeping its other parameters as they are. For our
 * own descriptions, before setLocalDescription.
 */
export function withOpusParameters(sdp, parameters) {
  const names = Object.keys(parameters);
  const added = Object.entries(parameters).map(([name, value]) => `${name}=${value}`);
  const lines = sdp.split("\r\n");
  const opus = lines.map((line) => /^a=rtpmap:(\d+) opus\//i.exec(line)?.[1]).filter(Boolean);
  for (const format of opus) {
    const prefix = `a=fmtp:${format} `;
    const at = lines.findIndex((line) => line.startsWith(prefix));
    if (at === -1) {
      // No parameters yet: a line of its own, after the format's rtpmap.
      const rtpmap = lines.findIndex((line) => line.startsWith(`a=rtpmap:${format} `));
      lines.splice(rtpmap + 1, 0, prefix + added.join(";"));
    } else {
      const kept = lines[at]
        .slice(prefix.length)
        .split(";")
        .filter((p) => p && !names.includes(p.trim().split("=")[0]));
      lines[at] = prefix + [...kept, ...added].join(";");
    }
  }
  return lines.join("\r\n");
}
