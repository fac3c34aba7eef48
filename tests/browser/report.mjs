// The benchmarks' reports: each rewrites its own `## ` section of docs/benchmarks.md, leaving the others.
import fs from 'node:fs';

// Replaces the section that starts with `lines[0]` (its heading) with `lines`, or appends it.
export function writeSection(doc, lines) {
  let text = fs.readFileSync(doc, 'utf8');
  const start = text.indexOf(lines[0] + '\n');
  const section = lines.join('\n') + '\n';
  if (start >= 0) {
    const end = text.indexOf('\n## ', start + 1);
    text = text.slice(0, start) + section + (end >= 0 ? text.slice(end + 1) : '');
  } else {
    text = text.trimEnd() + '\n\n' + section;
  }
  fs.writeFileSync(doc, text);
  console.log(`updated ${doc}`);
}
