"""Realistic, varied complaint bodies (Chinese and English) for the benchmark."""

from __future__ import annotations

import random

SCENARIOS = [
    (
        "LZ",
        "billing",
        "预交年费后宽带仍被停机",
        "我已预交全年宽带年费，营业员没有打印第二张欠费单，结果宽带被停。",
    ),
    (
        "LZ",
        "policy",
        "办理宽带被强制捆绑固话",
        "营业员说必须加装固定电话才能办理宽带，这是强制捆绑销售。",
    ),
    (
        "LZ",
        "billing",
        "企业套餐被拆成五个",
        "我公司只要一个商务套餐，却被开成了五个独立套餐，每月多收费。",
    ),
    (
        "LZ",
        "network",
        "晚上网速很慢经常断网",
        "每天晚上八点以后网速不到1M，经常断网，影响孩子上网课。",
    ),
    ("HOSP", "medical", "候诊时间过长", "挂号后等待了四个小时才看上病，护士态度也很冷淡。"),
    (
        "HOSP",
        "service_attitude",
        "Rude staff at the registration desk",
        "The clerk shouted at my elderly father and refused to explain the billing items.",
    ),
    ("PROP", "after_sales", "楼上漏水无人处理", "报修三天了没有维修人员上门，天花板一直在漏水。"),
    (
        "CEM",
        "product_quality",
        "水泥强度不达标",
        "我们搅拌站采购的P.O42.5水泥28天强度检测只有38MPa，要求联合检测。",
    ),
    (
        "APPL",
        "after_sales",
        "Washing machine still broken after two visits",
        "The technician promised an on-site repair within 24 hours but it has failed twice.",
    ),
    (
        "HOTEL",
        "service_attitude",
        "前台服务态度差",
        "入住时前台让我们等了四十分钟，还说是我们预订错了。",
    ),
]

SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"


def complaint_body(sequence: int, rng: random.Random) -> dict:
    branch, category, subject, description = rng.choice(SCENARIOS)
    name = rng.choice(SURNAMES) + rng.choice(["先生", "女士"])
    # Unique customer and text, so the resubmission guard never folds two requests into one.
    return {
        "branch": branch,
        "channel": rng.choice(["phone", "web", "email", "chat", "walk_in", "hotline"]),
        "category": category,
        "severity": rng.choice(["low", "normal", "normal", "normal", "high"]),
        "flags": [],
        "customer": {
            "name": name,
            "phone": f"139{rng.randrange(10**8):08d}",
            "preferred_contact_channel": "phone",
        },
        "subject": subject,
        "description": f"{description}（单号 {sequence:08d}）",
        "product": rng.choice(["宽带", "固话", "门诊", "物业", "水泥", "洗衣机", "客房"]),
        "account_number": f"AC{sequence:010d}",
    }
