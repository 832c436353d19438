// The reference for frugal's GPT-2 tokenizer: encodes with the npm package gpt-3-encoder.
//   node gpt2_encode.js PACKAGE_DIR strings IN.json OUT.json  JSON array of strings -> array of id arrays
//   node gpt2_encode.js PACKAGE_DIR text IN.txt OUT.bin       a UTF-8 text file -> uint32 ids (little-endian)
// Prints the encoding speed in MB of UTF-8 input per CPU second of this process (and wall time). The package builds its output with
// Array.concat (quadratic in the length), so a long text is encoded in pieces cut after a lone
// newline between two non-spaces: the regex matches that newline alone whatever follows, so no
// match crosses such a point or depends on what lies beyond it.
const fs = require('fs');
const [pkg, mode, input, output] = process.argv.slice(2);
const { encode } = require(pkg);

const t0 = process.hrtime.bigint(), c0 = process.cpuUsage();
let bytes = 0, result;
if (mode === 'strings') {
  const strings = JSON.parse(fs.readFileSync(input, 'utf-8'));
  result = strings.map(s => { bytes += Buffer.byteLength(s); return encode(s); });
} else {
  const text = fs.readFileSync(input, 'utf-8');
  bytes = Buffer.byteLength(text);
  result = [];
  for (const piece of text.split(/(?<=\S\n)(?=\S)/)) for (const id of encode(piece)) result.push(id);
}
const wall = Number(process.hrtime.bigint() - t0) / 1e9;
const c = process.cpuUsage(c0), cpu = (c.user + c.system) / 1e6;
if (mode === 'strings') fs.writeFileSync(output, JSON.stringify(result));
else fs.writeFileSync(output, Buffer.from(new Uint32Array(result).buffer));
console.log(`gpt-3-encoder: ${(bytes / 1e6).toFixed(2)} MB in ${cpu.toFixed(3)} s CPU (${wall.toFixed(3)} s wall), ${(bytes / 1e6 / cpu).toFixed(2)} MB/s`);
