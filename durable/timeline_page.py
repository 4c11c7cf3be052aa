"""The fixed parts of a timeline page: its style, its script and the page around the SVG.

The script does only what a picture cannot: tooltips (built with `textContent`,
never as HTML), local clock times, and a summary for tests on the root element:
`data-bars` (bars drawn), `data-errors` (errors seen, recorded by `CATCH`, which
runs first) and `data-ready`.
"""

from __future__ import annotations

DEFS = (
    "<defs>"
    '<pattern id="hatch" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
    '<rect width="8" height="8" fill="#f3f1ea"/><line x1="0" y1="0" x2="0" y2="8" stroke="#cfc8b4" stroke-width="3"/>'
    "</pattern>"
    '<pattern id="cut" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
    '<rect width="6" height="6" fill="#8e6fd8"/><line x1="0" y1="0" x2="0" y2="6" stroke="#5b3fa6" stroke-width="3"/>'
    "</pattern>"
    "</defs>"
)

STYLE = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px 20px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px}h1 small{font-weight:normal;color:#666;font-size:13px}
.facts{margin:2px 0 6px}.note{margin:2px 0;color:#666;font-size:12px}
.legend{margin:4px 0}.key{margin-right:14px;white-space:nowrap}.key svg{vertical-align:-2px;margin-right:4px}
#chart{display:block;margin-top:6px}
.stripe{fill:#f6f7f9}.label{font-size:12px;text-anchor:end;fill:#333}.label.crit{font-weight:bold;fill:#000}
.grid line{stroke:#e3e5e8}.tick{font-size:11px;fill:#777;text-anchor:middle}.tick.y{text-anchor:end}
.bar{stroke:none}.bar.succeeded{fill:#34a36a}.bar.retried{fill:#f0a030}.bar.failed{fill:#d9413a}
.bar.cancelled{fill:#a3a8b0}.bar.cut{fill:url(#cut)}.bar.running{fill:#3b82f6}
.bar.crit{stroke:#111;stroke-width:2}.bar:hover{stroke:#000;stroke-width:2}
.numbers text{font-size:10px;fill:#fff;pointer-events:none}
.backoff line{stroke:#c07a10;stroke-width:1.5;stroke-dasharray:3 3}
.mark{fill:#fff;stroke:#888;stroke-width:1.5}.mark.upstream_failed,.mark.failed{stroke:#d9413a}
.critpath path{fill:none;stroke:#111;stroke-width:1.2;stroke-dasharray:2 2}
.gap{fill:url(#hatch);stroke:#cfc8b4}.gaplabel{font-size:11px;fill:#6b6350;text-anchor:middle}
.session{font-size:12px;fill:#333}.ending{font-size:12px;text-anchor:end;fill:#333}
.ending.interrupted,.ending.died{fill:#b02a24;font-weight:bold}
.end{stroke:#999;stroke-dasharray:4 3}.end.interrupted,.end.died{stroke:#b02a24;stroke-width:2;stroke-dasharray:none}
.running .area{fill:#3b82f633;stroke:#3b82f6;stroke-width:1}.running .title{font-size:12px;text-anchor:end;font-weight:bold}
.axisline{stroke:#999}.bound{stroke:#d9413a;stroke-dasharray:6 4;stroke-width:1.5}
.boundlabel{font-size:11px;fill:#b02a24;text-anchor:end}
#tip{position:fixed;display:none;pointer-events:none;background:#fffff4;border:1px solid #999;padding:6px 8px;
max-width:460px;font-size:12px;box-shadow:0 2px 6px #0003;white-space:pre-wrap;word-break:break-word}
#tip b{font-size:13px}#page-errors{display:none}
"""

# First thing in <head>: record every error, so that a test can read them back.
CATCH = """
(function(){var errors=[];function note(m){errors.push(String(m));
document.documentElement.dataset.errors=errors.length;
var el=document.getElementById('page-errors');if(el)el.textContent=errors.join('\\n');}
window.__timelineErrors=errors;document.documentElement.dataset.errors=0;
window.addEventListener('error',function(e){note(e.message||('cannot load '+((e.target&&(e.target.src||e.target.href))||'a resource')));},true);
window.addEventListener('unhandledrejection',function(e){note('unhandled rejection: '+e.reason);});
document.addEventListener('securitypolicyviolation',function(e){note('blocked: '+e.blockedURI);});
var original=console.error;console.error=function(){note([].slice.call(arguments).join(' '));return original.apply(console,arguments);};
})();
"""

SCRIPT = """
(function(){
var data=JSON.parse(document.getElementById('timeline-data').textContent);
var tip=document.getElementById('tip');
function dur(s){if(s<1)return Math.round(s*1000)+' ms';if(s<60)return s.toFixed(s<10?2:1)+' s';
if(s<3600)return Math.floor(s/60)+' min '+Math.floor(s%60)+' s';return Math.floor(s/3600)+' h '+Math.floor(s%3600/60)+' min';}
function p2(n,w){return String(n).padStart(w||2,'0');}
function day(t){var d=new Date(t*1000);return d.getFullYear()+'-'+p2(d.getMonth()+1)+'-'+p2(d.getDate());}
function hms(t){var d=new Date(t*1000);return p2(d.getHours())+':'+p2(d.getMinutes())+':'+p2(d.getSeconds());}
function clock(t){return day(t)+' '+hms(t)+'.'+p2(new Date(t*1000).getMilliseconds(),3);}
function show(e,lines){tip.textContent='';lines.forEach(function(l,i){if(l===null)return;
var el=document.createElement(i===0?'b':'div');el.textContent=l;tip.appendChild(el);});
tip.style.display='block';var x=e.clientX+14,y=e.clientY+14;
if(x+tip.offsetWidth>innerWidth)x=e.clientX-tip.offsetWidth-10;if(y+tip.offsetHeight>innerHeight)y=e.clientY-tip.offsetHeight-10;
tip.style.left=Math.max(0,x)+'px';tip.style.top=Math.max(0,y)+'px';}
var outcome={succeeded:'succeeded',retried:'failed, retried',failed:'failed',cancelled:'cancelled',
cut:'cut off: its session ended (interrupted or the process died)',running:'running',skipped:'skipped',
upstream_failed:'upstream failed'};
document.getElementById('chart').addEventListener('mousemove',function(e){
var t=e.target,i=t.getAttribute('data-i'),m=t.getAttribute('data-m');
if(i!==null){var a=data.attempts[+i],s=data.sessions[a[3]];
show(e,[a[0],'tool: '+a[1],'attempt '+a[2]+' \\u00b7 session '+(a[3]+1)+(a[8]?' \\u00b7 on the critical path':''),
'start: '+clock(a[4])+' (+'+dur(a[4]-s[0])+' into the session)','duration: '+dur(a[5]-a[4]),
'outcome: '+(outcome[a[6]]||a[6]),a[9]?'then a backoff of '+dur(a[9]):null,a[7]?'error: '+a[7]:null]);}
else if(m!==null){var k=data.marks[+m];
show(e,[k[0],'tool: '+k[1],(outcome[k[4]]||k[4])+', without running','at: '+clock(k[3]),k[5]?k[5]:null]);}
else tip.style.display='none';});
document.getElementById('chart').addEventListener('mouseleave',function(){tip.style.display='none';});
var shown=null;document.querySelectorAll('[data-t]').forEach(function(el){var t=+el.getAttribute('data-t');
el.textContent=day(t)===shown?hms(t):day(t)+' '+hms(t);shown=day(t);});
var root=document.documentElement;
root.dataset.bars=document.querySelectorAll('#chart rect.bar').length;
root.dataset.marks=document.querySelectorAll('#chart .mark').length;
root.dataset.ready='1';
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>{title}</title>
<script>{catch}</script>
<style>{style}</style>
</head><body>
{header}
{svg}
<div id="tip"></div>
<pre id="page-errors"></pre>
<script type="application/json" id="timeline-data">{data}</script>
<script>{script}</script>
</body></html>
"""
